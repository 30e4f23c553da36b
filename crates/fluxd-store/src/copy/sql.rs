//! The statements a copy runs, the same text on both backends (their tables have the same
//! columns): a page of each kind in key order after a cursor, and an insert of one row that
//! leaves an existing row with the same key alone.

use super::RecordKind;

/// The page query of `kind`: its rows whose key is above the cursor (`$1`, and `$2` for
/// fine-tunes), in key order, at most `$2` (`$3`) of them. The empty text is below every key
/// (no key is empty), so a cursor of empty texts starts at the first row.
pub(crate) const fn page(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Tenant => "SELECT * FROM tenants WHERE id > $1 ORDER BY id LIMIT $2",
        RecordKind::Key => "SELECT * FROM api_keys WHERE id > $1 ORDER BY id LIMIT $2",
        RecordKind::Finetune => {
            "SELECT * FROM finetunes WHERE (tenant, id) > ($1, $2) \
             ORDER BY tenant, id LIMIT $3"
        }
        RecordKind::Task => "SELECT * FROM tasks WHERE id > $1 ORDER BY id LIMIT $2",
        RecordKind::Webhook => "SELECT * FROM webhooks WHERE id > $1 ORDER BY id LIMIT $2",
        RecordKind::Secret => "SELECT * FROM shared_secrets WHERE name > $1 ORDER BY name LIMIT $2",
        RecordKind::Balance => {
            "SELECT * FROM credit_balances WHERE tenant > $1 ORDER BY tenant LIMIT $2"
        }
        RecordKind::Price => "SELECT * FROM prices WHERE endpoint > $1 ORDER BY endpoint LIMIT $2",
    }
}

/// Whether the kind's key has two columns (its page query takes two cursor parameters).
pub(crate) const fn two_column_key(kind: RecordKind) -> bool {
    matches!(kind, RecordKind::Finetune)
}

/// Inserts one tenant unless there is one of that name.
pub(crate) const INSERT_TENANT: &str =
    "INSERT INTO tenants (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";

/// Inserts one key unless there is one with that id.
pub(crate) const INSERT_KEY: &str = "INSERT INTO api_keys \
    (id, tenant, label, prefix, key_hash, max_active_tasks, created_at, revoked_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING";

/// Inserts one fine-tune unless the tenant has one of that name.
pub(crate) const INSERT_FINETUNE: &str = "INSERT INTO finetunes \
    (tenant, id, format, rank, alpha, base_hidden, trigger_word, comment, blob_key, size_bytes, \
     sha256, created_at, shared) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
    ON CONFLICT (tenant, id) DO NOTHING";

/// Inserts one task unless there is one with that id.
pub(crate) const INSERT_TASK: &str = "INSERT INTO tasks \
    (id, tenant, key_id, params, finetune_id, webhook_url, webhook_secret, status, worker_id, \
     lease_until, attempts, max_attempts, progress, last_error, details, sample_key, prompt_used, \
     seed_used, start_time, end_time, created_at, updated_at, finished_at, cancel_requested, \
     charged, preview_key, preview_step, preview_steps) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
            $19, $20, $21, $22, $23, $24, $25, $26, $27, $28) \
    ON CONFLICT (id) DO NOTHING";

/// Inserts one outbox row unless there is one with that id.
pub(crate) const INSERT_WEBHOOK: &str = "INSERT INTO webhooks \
    (id, task_id, webhook_id, url, secret, payload, status, attempts, next_attempt_at, worker_id, \
     lease_until, last_error, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
    ON CONFLICT (id) DO NOTHING";

/// Inserts one shared secret unless there is one of that name.
pub(crate) const INSERT_SECRET: &str = "INSERT INTO shared_secrets (name, value, created_at) \
    VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";

/// Inserts one balance unless the tenant has one.
pub(crate) const INSERT_BALANCE: &str =
    "INSERT INTO credit_balances (tenant, balance, updated_at) \
    VALUES ($1, $2, $3) ON CONFLICT (tenant) DO NOTHING";

/// Inserts one price unless the endpoint has one.
pub(crate) const INSERT_PRICE: &str = "INSERT INTO prices \
    (endpoint, per_task, per_megapixel, updated_at) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (endpoint) DO NOTHING";

/// The insert of `$record` (a `&Record`) with its values bound, as a query of whichever backend
/// the expansion runs against (a macro, not a function: the backends' query types differ).
macro_rules! insert_record {
    ($record:expr) => {{
        use $crate::copy::sql::*;
        use $crate::copy::Record;
        use $crate::sql::rows::{int, seed_to_sql};
        use $crate::time::to_millis;
        let opt_millis = |t: Option<std::time::SystemTime>| t.map(to_millis);
        match $record {
            Record::Tenant(t) => sqlx::query(INSERT_TENANT)
                .bind(t.id.clone())
                .bind(to_millis(t.created_at)),
            Record::Key(k) => sqlx::query(INSERT_KEY)
                .bind(k.id.to_string())
                .bind(k.tenant.clone())
                .bind(k.label.clone())
                .bind(k.prefix.clone())
                .bind(k.key_hash.clone())
                .bind(int(k.max_active_tasks))
                .bind(to_millis(k.created_at))
                .bind(opt_millis(k.revoked_at)),
            Record::Finetune(f) => sqlx::query(INSERT_FINETUNE)
                .bind(f.tenant.clone())
                .bind(f.id.clone())
                .bind(f.format.clone())
                .bind(int(f.rank))
                .bind(f.alpha)
                .bind(f.base_hidden.map(int))
                .bind(f.trigger_word.clone())
                .bind(f.comment.clone())
                .bind(f.blob_key.clone())
                .bind(i64::try_from(f.size_bytes).unwrap_or(i64::MAX))
                .bind(f.sha256.clone())
                .bind(to_millis(f.created_at))
                .bind(f.shared),
            Record::Task(t) => sqlx::query(INSERT_TASK)
                .bind(t.id.to_string())
                .bind(t.tenant.clone())
                .bind(t.key_id.to_string())
                .bind(t.params.clone())
                .bind(t.finetune_id.clone())
                .bind(t.webhook_url.clone())
                .bind(t.webhook_secret.clone())
                .bind(t.status.as_str())
                .bind(t.worker_id.clone())
                .bind(opt_millis(t.lease_until))
                .bind(int(t.attempts))
                .bind(int(t.max_attempts))
                .bind(t.progress)
                .bind(t.last_error.clone())
                .bind(t.details.clone())
                .bind(t.sample_key.clone())
                .bind(t.prompt_used.clone())
                .bind(t.seed_used.map(seed_to_sql))
                .bind(t.start_time)
                .bind(t.end_time)
                .bind(to_millis(t.created_at))
                .bind(to_millis(t.updated_at))
                .bind(opt_millis(t.finished_at))
                .bind(t.cancel_requested)
                .bind(t.charged)
                .bind(t.preview_key.clone())
                .bind(t.preview_step.map(int))
                .bind(t.preview_steps.map(int)),
            Record::Webhook(w) => sqlx::query(INSERT_WEBHOOK)
                .bind(w.id.to_string())
                .bind(w.task_id.to_string())
                .bind(w.webhook_id.clone())
                .bind(w.url.clone())
                .bind(w.secret.clone())
                .bind(w.payload.clone())
                .bind(w.status.clone())
                .bind(int(w.attempts))
                .bind(to_millis(w.next_attempt_at))
                .bind(w.worker_id.clone())
                .bind(opt_millis(w.lease_until))
                .bind(w.last_error.clone())
                .bind(to_millis(w.created_at))
                .bind(to_millis(w.updated_at)),
            Record::Secret(s) => sqlx::query(INSERT_SECRET)
                .bind(s.name.clone())
                .bind(s.value.clone())
                .bind(to_millis(s.created_at)),
            Record::Balance(b) => sqlx::query(INSERT_BALANCE)
                .bind(b.tenant.clone())
                .bind(b.balance)
                .bind(to_millis(b.updated_at)),
            Record::Price(p) => sqlx::query(INSERT_PRICE)
                .bind(p.endpoint.clone())
                .bind(p.price.per_task)
                .bind(p.price.per_megapixel)
                .bind(to_millis(p.updated_at)),
        }
    }};
}
pub(crate) use insert_record;

/// The page query of `$kind` after `$cursor` (a `(String, String)`), at most `$limit` rows, as
/// a query of whichever backend the expansion runs against.
macro_rules! page_query {
    ($kind:expr, $cursor:expr, $limit:expr) => {{
        let (first, second) = $cursor;
        let query = sqlx::query($crate::copy::sql::page($kind)).bind(first);
        let query = if $crate::copy::sql::two_column_key($kind) {
            query.bind(second)
        } else {
            query
        };
        query.bind(i64::from($limit))
    }};
}
pub(crate) use page_query;

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind's table and its key columns.
    const fn table(kind: RecordKind) -> (&'static str, &'static str) {
        match kind {
            RecordKind::Tenant => ("tenants", "id"),
            RecordKind::Key => ("api_keys", "id"),
            RecordKind::Finetune => ("finetunes", "tenant, id"),
            RecordKind::Task => ("tasks", "id"),
            RecordKind::Webhook => ("webhooks", "id"),
            RecordKind::Secret => ("shared_secrets", "name"),
            RecordKind::Balance => ("credit_balances", "tenant"),
            RecordKind::Price => ("prices", "endpoint"),
        }
    }

    #[test]
    fn every_kind_has_a_table_and_a_page_query() {
        for kind in RecordKind::ALL {
            let (name, key) = table(kind);
            let query = page(kind);
            assert!(query.contains(&format!("FROM {name} ")), "{query}");
            assert!(query.contains(&format!("ORDER BY {key} ")), "{query}");
        }
    }
}
