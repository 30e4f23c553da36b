//! Durable state of fluxd: API keys and tenants, the task queue, fine-tune records, the webhook
//! outbox (all behind the [`Store`] trait) and blobs ([`BlobStore`]).
//!
//! [`SqliteStore`] is the default backend: one file, WAL, `synchronous=FULL`, writes group-committed
//! by a single writer. [`PostgresStore`] serves several API nodes and workers on one PostgreSQL
//! database. Both implement the same trait and prove it by passing [`conformance`];
//! [`open_store`] picks one from a [`DatabaseUrl`].

mod apikey;
mod ask;
mod blob;
pub mod conformance;
pub mod copy;
mod error;
mod postgres;
mod secret;
mod sql;
mod sqlite;
mod store;
mod time;
mod types;
mod url;
mod wakeup;

pub use apikey::KEY_PREFIX;
pub use blob::{image_content_type, BlobCopy, BlobStore};
pub use error::{Source, StoreError};
pub use postgres::{PostgresOptions, PostgresStore};
pub use secret::{SharedSecret, SHARED_SECRET_LEN};
pub use sqlite::{SqliteOptions, SqliteStore, WriterStats};
pub use store::{Result, Store};
pub use types::{credits_from_milli, credits_to_milli};
pub use types::{
    CancelOutcome, Claim, ClaimedTask, ErrorOutcome, FinetuneRecord, InsertOutcome, KeyInfo,
    KeyRecord, ModerationKind, NewKey, NewTask, NewWebhook, PreviewRecord, Price, ReadyRecord,
    TaskRecord, TaskState, TaskStatus, WebhookDelivery, WebhookRecord, DEFAULT_MAX_ACTIVE_TASKS,
    DEFAULT_MAX_ATTEMPTS, MILLI_PER_CREDIT, WEBHOOK_STATUSES,
};
pub use url::{open_store, DatabaseUrl};
pub use wakeup::{Wakeup, Wakeups};
