//! The worker loop: claims tasks from the store (atomically, under a lease kept alive by
//! heartbeats), reads the generation the task was accepted with ([`fluxd_api::StoredTask`]),
//! resolves its fine-tune if it has one, hands the job to the engine thread, records progress,
//! and finishes the task `Ready` with the stored image, or `Error` with words a user can act on.
//! Each task runs in a `task` span with its id and the `x-request-id` of its submit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fluxd_api::StoredTask;
use fluxd_engine::safety::{moderate_nsfw_score, SafetyTolerance};
use fluxd_engine::transformer::FluxConfig;
use fluxd_store::{
    Claim, ClaimedTask, ErrorOutcome, ModerationKind, NewWebhook, ReadyRecord, TaskState,
};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::delivery;
use crate::engine::{generate_params, output_format, EngineHandle, EngineState, GenerateJob};
use crate::lease::{LeaseClock, Renewal};
use crate::state::AppState;
use failure::{engine_failure, not_recorded, TaskFailure};
use lora::{finetune_lora, LoraCache};

mod failure;
mod lora;
mod preview;

/// Heartbeats per lease: three can be missed (a busy database) before the lease runs out.
const HEARTBEATS_PER_LEASE: u32 = 4;
/// How often a running task's worker asks the store whether the client cancelled it: the
/// contract's "stops within a second", whichever process took the cancel.
const CANCEL_POLL: Duration = Duration::from_millis(500);
/// How often an idle worker looks for work when no submit wakes it (tasks of another process,
/// expired leases).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// How a task that ran to its end came out.
enum Outcome {
    Ready(ReadyRecord),
    /// Refused by moderation: the prompt before generating, or the image after.
    Moderated {
        kind: ModerationKind,
        reasons: Vec<String>,
    },
}

/// Runs the worker until `shutdown` turns true. Waits for the model first. A task running at
/// shutdown may finish within the configured drain time; after that it is stopped between two
/// denoising steps and handed back to the queue, so the next start (or another worker) runs it
/// at once instead of after its lease.
pub async fn run_worker(
    state: AppState,
    engine: EngineHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let worker_id = format!("worker-{}", uuid::Uuid::new_v4());
    let cfg = tokio::select! {
        cfg = wait_ready(&engine) => match cfg {
            Some(cfg) => cfg,
            None => return,
        },
        _ = shutdown.wait_for(|stop| *stop) => return,
    };
    tracing::info!(worker_id, "worker started");
    let mut cache = LoraCache::default();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let lease = state.config().task_lease;
        let claimed_at = tokio::time::Instant::now();
        let claim = match state.store().claim_next(&worker_id, lease).await {
            Ok(claim) => claim,
            Err(err) => {
                tracing::warn!(%err, "claiming a task failed");
                None
            }
        };
        let Some(claim) = claim else {
            tokio::select! {
                _ = state.wake().notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            continue;
        };
        let task_id = claim.task().id;
        // Claiming set its progress to 0: get_result must not answer from before.
        state.task_cache().invalidate(task_id);
        let request_id = StoredTask::request_id_of(&claim.task().params).unwrap_or("");
        let span = tracing::info_span!("task", %task_id, request_id = %request_id);
        let cancel = Arc::new(AtomicBool::new(false));
        let clock = LeaseClock::new(lease, claimed_at);
        let run = handle_claim(
            &state,
            &engine,
            &cfg,
            &mut cache,
            (&worker_id, clock),
            claim,
            &cancel,
        )
        .instrument(span);
        tokio::pin!(run);
        let stopping = tokio::select! {
            () = &mut run => false,
            // (Decided here so the watch guard does not live across the awaits below.)
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        if stopping {
            let drain = state.config().drain_timeout;
            tracing::info!(%task_id, seconds = drain.as_secs_f64(), "shutting down: letting the running task finish");
            if tokio::time::timeout(drain, &mut run).await.is_err() {
                tracing::info!(%task_id, "stopping the running task and handing it back");
                cancel.store(true, Ordering::Relaxed);
                run.await;
            }
            break;
        }
    }
    tracing::info!(worker_id, "worker stopped");
}

/// How often finished tasks past their retention are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Deletes finished tasks older than the retention, and their images, until `shutdown`.
pub async fn run_janitor(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let Some(cutoff) = SystemTime::now().checked_sub(state.config().result_retention) else {
            continue;
        };
        match state.store().expire_finished(cutoff).await {
            Ok(keys) => {
                if !keys.is_empty() {
                    tracing::info!(tasks = keys.len(), "expired finished tasks");
                }
                for key in keys {
                    // A failed delete leaves an unreachable file; the next start does not
                    // retry it, which costs disk, not correctness.
                    if let Err(err) = state.blobs().delete(&key).await {
                        tracing::warn!(%err, key, "could not delete an expired image");
                    }
                }
            }
            Err(err) => tracing::warn!(%err, "expiring finished tasks failed"),
        }
    }
}

async fn wait_ready(engine: &EngineHandle) -> Option<Arc<FluxConfig>> {
    let mut states = engine.watch();
    loop {
        let current = states.borrow_and_update().clone();
        match current {
            EngineState::Ready(cfg) => return Some(cfg),
            EngineState::Failed(_) => return None,
            EngineState::Loading => {
                if states.changed().await.is_err() {
                    return None;
                }
            }
        }
    }
}

async fn handle_claim(
    state: &AppState,
    engine: &EngineHandle,
    cfg: &FluxConfig,
    cache: &mut LoraCache,
    (worker_id, mut clock): (&str, LeaseClock),
    claim: Claim,
    cancel: &Arc<AtomicBool>,
) {
    let task = match claim {
        // Cancelled while an earlier run held it, and that run stopped before finishing it.
        Claim::Run(task) | Claim::Exhausted(task) if task.cancel_requested => {
            let failure = TaskFailure::user(fluxd_api::CANCELLED_DETAILS);
            finish_error(state, &task, (worker_id, &clock), failure).await;
            return;
        }
        Claim::Run(task) => task,
        Claim::Exhausted(task) => {
            let details = format!(
                "The task was interrupted {} times (its worker stopped) and was given up",
                task.attempts.saturating_sub(1)
            );
            finish_error(
                state,
                &task,
                (worker_id, &clock),
                TaskFailure::user(details),
            )
            .await;
            return;
        }
    };
    tracing::info!(attempt = task.attempts, "running task");
    let started = std::time::Instant::now();
    let ran = run_task(
        state,
        engine,
        cfg,
        cache,
        (worker_id, &mut clock),
        &task,
        cancel,
    )
    .await;
    // A task let go may be another worker's now, with its own preview under the same key.
    let discard_preview = state.config().preview_every > 0 && !matches!(&ran, Err(f) if f.let_go);
    match ran {
        Ok(Outcome::Moderated { kind, reasons }) => {
            finish_moderated(state, &task, (worker_id, &clock), kind, reasons).await;
        }
        Ok(Outcome::Ready(ready)) => {
            let generation_seconds = started.elapsed().as_secs_f64();
            let webhook = final_webhook(state, &task, TaskState::Ready(ready.clone())).await;
            let recorded = clock
                .write(|| {
                    let (ready, webhook) = (ready.clone(), webhook.clone());
                    state
                        .store()
                        .complete_ready(task.id, worker_id, ready, webhook)
                })
                .await;
            state.task_cache().invalidate(task.id);
            match recorded {
                Ok(()) => {
                    tracing::info!("task ready");
                    crate::metrics::task_finished("Ready", Some(generation_seconds));
                    state.webhook_wake().notify_one();
                }
                Err(lost) => not_recorded("the finished task", &lost),
            }
        }
        // Nothing to write: the task is someone else's now, or will be once its lease is seen
        // expired.
        Err(failure) if failure.let_go => {}
        Err(failure) if failure.cancelled => {
            let released = state.store().release_task(task.id, worker_id).await;
            state.task_cache().invalidate(task.id);
            match released {
                Ok(()) => tracing::info!("task handed back to the queue"),
                // The lease runs out instead; the task runs again then.
                Err(err) => tracing::warn!(%err, "could not hand the task back"),
            }
        }
        Err(failure) => finish_error(state, &task, (worker_id, &clock), failure).await,
    }
    if discard_preview {
        preview::discard(state, task.id).await;
    }
}

/// The webhook for a claimed task's final state (see [`crate::webhook::final_webhook`]).
async fn final_webhook(
    state: &AppState,
    task: &ClaimedTask,
    final_state: TaskState,
) -> Option<NewWebhook> {
    crate::webhook::final_webhook(
        state,
        task.id,
        (task.webhook_url.clone(), task.webhook_secret.clone()),
        final_state,
    )
    .await
}

async fn finish_error(
    state: &AppState,
    task: &ClaimedTask,
    (worker_id, clock): (&str, &LeaseClock),
    f: TaskFailure,
) {
    let final_state = TaskState::Error {
        details: f.details.clone(),
    };
    // The store only queues it when the failure is final (not re-queued).
    let webhook = final_webhook(state, task, final_state).await;
    let recorded = clock
        .write(|| {
            let (details, webhook) = (f.details.clone(), webhook.clone());
            state
                .store()
                .complete_error(task.id, worker_id, details, f.retryable, webhook)
        })
        .await;
    state.task_cache().invalidate(task.id);
    match recorded {
        Ok(ErrorOutcome::Requeued { attempts }) => {
            tracing::warn!(attempts, details = f.details, "task failed, re-queued");
        }
        Ok(ErrorOutcome::Failed) => {
            tracing::info!(details = f.details, "task failed");
            crate::metrics::task_finished("Error", None);
            state.webhook_wake().notify_one();
        }
        Err(lost) => not_recorded("the task's failure", &lost),
    }
}

async fn finish_moderated(
    state: &AppState,
    task: &ClaimedTask,
    (worker_id, clock): (&str, &LeaseClock),
    kind: ModerationKind,
    reasons: Vec<String>,
) {
    let final_state = TaskState::Moderated {
        kind,
        reasons: reasons.clone(),
    };
    let webhook = final_webhook(state, task, final_state).await;
    let status = match kind {
        ModerationKind::Request => "Request Moderated",
        ModerationKind::Content => "Content Moderated",
    };
    let recorded = clock
        .write(|| {
            let (reasons, webhook) = (reasons.clone(), webhook.clone());
            state
                .store()
                .complete_moderated(task.id, worker_id, kind, reasons, webhook)
        })
        .await;
    state.task_cache().invalidate(task.id);
    match recorded {
        Ok(()) => {
            tracing::info!(status, "task moderated");
            crate::metrics::task_finished(status, None);
            state.webhook_wake().notify_one();
        }
        Err(lost) => not_recorded("the moderation", &lost),
    }
}

async fn run_task(
    state: &AppState,
    engine: &EngineHandle,
    cfg: &FluxConfig,
    cache: &mut LoraCache,
    (worker_id, clock): (&str, &mut LeaseClock),
    task: &ClaimedTask,
    cancel: &Arc<AtomicBool>,
) -> Result<Outcome, TaskFailure> {
    let stored = StoredTask::from_params(&task.params).map_err(|e| {
        tracing::error!(%e, "stored parameters do not parse");
        TaskFailure::user("The stored request could not be read; submit it again")
    })?;
    tracing::debug!(endpoint = stored.endpoint.name(), "generation read");
    let request = stored.generation;
    let lora = match &request.finetune {
        None => None,
        Some(finetune) => {
            let id = task
                .finetune_id
                .clone()
                .unwrap_or_else(|| finetune.id.clone());
            let lora = finetune_lora(state, cfg, cache, clock, &task.tenant, &id).await?;
            // The contract bounds the strength to 0..=2, well inside f32.
            Some((lora, finetune.strength as f32))
        }
    };
    let seed = match request.seed {
        Some(seed) => seed,
        // The engine seeds like torch, from the low 32 bits: a 32-bit random seed is recorded
        // exactly as it was used, so resubmitting it reproduces the image.
        None => u64::from(getrandom::u32().map_err(|e| {
            tracing::error!(%e, "no randomness for a seed");
            TaskFailure::retryable("Could not draw a random seed")
        })?),
    };
    // The reference's 0..=6 was checked at submit; a stored value out of range is clamped to
    // the strictest.
    let tolerance = SafetyTolerance::new(request.safety_tolerance)
        .unwrap_or_else(|_| SafetyTolerance::new(0).unwrap_or_default());
    let policy = &state.config().prompt_policy;
    if let Some(reasons) = policy.moderate(&request.prompt, tolerance) {
        return Ok(Outcome::Moderated {
            kind: ModerationKind::Request,
            reasons,
        });
    }
    let prompt = if request.prompt_upsampling {
        let rewritten = upsample(state, &request.prompt, seed).await?;
        // The rewrite is checked too: a language model can add what the caller did not write.
        if let Some(reasons) = policy.moderate(&rewritten, tolerance) {
            return Ok(Outcome::Moderated {
                kind: ModerationKind::Request,
                reasons,
            });
        }
        rewritten
    } else {
        request.prompt.clone()
    };
    let mut params = generate_params(&request, seed).map_err(engine_failure)?;
    params.prompt.clone_from(&prompt);
    let image_prompt = match &request.image_prompt {
        None => None,
        Some(text) => {
            let max_pixels = state
                .config()
                .image_prompt_max_pixels
                .unwrap_or(crate::state::DEFAULT_IMAGE_PROMPT_MAX_PIXELS);
            let text = text.clone();
            let decoded =
                tokio::task::spawn_blocking(move || crate::image_prompt::decode(&text, max_pixels))
                    .await
                    .map_err(|e| TaskFailure::retryable(format!("Decoding image_prompt: {e}")))?;
            Some(decoded.map_err(TaskFailure::user)?)
        }
    };
    let format = output_format(request.output_format);
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let (preview_tx, mut preview_rx) = mpsc::unbounded_channel();
    let every = usize::try_from(state.config().preview_every).unwrap_or(0);
    let job = GenerateJob {
        params,
        lora,
        format,
        progress: progress_tx,
        cancel: cancel.clone(),
        image_prompt,
        // 0..=1 on ultra, 1 elsewhere.
        image_prompt_strength: request.image_prompt_strength as f32,
        previews: (every > 0).then_some((every, preview_tx)),
    };
    let start_time = epoch_secs(SystemTime::now());
    let generation = engine.generate(job);
    tokio::pin!(generation);
    let mut heartbeat = tokio::time::interval(clock.lease() / HEARTBEATS_PER_LEASE);
    heartbeat.tick().await;
    let mut cancel_poll = tokio::time::interval(CANCEL_POLL);
    cancel_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let generated = loop {
        tokio::select! {
            result = &mut generation => break result.map_err(engine_failure)?,
            Some(progress) = progress_rx.recv() => {
                let recorded = state.store().set_progress(task.id, worker_id, progress).await;
                state.task_cache().invalidate(task.id);
                match recorded {
                    Ok(()) => {}
                    // Progress is a hint; an outage shows in the heartbeats' warnings.
                    Err(err) if err.is_retryable() => {
                        tracing::debug!(%err, "could not record progress");
                    }
                    Err(err) => tracing::warn!(%err, "could not record progress"),
                }
            }
            Some(mut latest) = preview_rx.recv() => {
                // Only the newest matters when the store is slower than the steps.
                while let Ok(newer) = preview_rx.try_recv() {
                    latest = newer;
                }
                preview::store(state, task.id, worker_id, latest).await;
            }
            _ = cancel_poll.tick() => {
                match state.store().cancel_requested(task.id, worker_id).await {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::info!("the client cancelled the task; stopping it");
                        // Between two steps; whatever the engine answers, the task is cancelled.
                        cancel.store(true, Ordering::Relaxed);
                        let _ = (&mut generation).await;
                        return Err(TaskFailure::user(fluxd_api::CANCELLED_DETAILS));
                    }
                    // A lost lease shows at the next heartbeat, which handles it.
                    Err(err) => tracing::debug!(%err, "could not ask whether the task was cancelled"),
                }
            }
            _ = heartbeat.tick() => {
                let lease = clock.lease();
                let renewal = clock
                    .renew(state.store().heartbeat(task.id, worker_id, lease))
                    .await;
                match renewal {
                    Ok(Renewal::Renewed) => {}
                    // Soon again, not a quarter lease later: the lease is running down.
                    Ok(Renewal::Retry) => {
                        heartbeat.reset_after(clock.retry_delay());
                    }
                    Err(lost) => {
                        // Stop the engine between two steps and wait for it, so that it does
                        // not go on with a task this worker gave up.
                        cancel.store(true, Ordering::Relaxed);
                        let _ = (&mut generation).await;
                        return Err(TaskFailure::lost(lost));
                    }
                }
            }
        }
    };
    let end_time = epoch_secs(SystemTime::now());
    if let Some(score) = generated.nsfw_score {
        tracing::debug!(score, "safety classifier score");
        if let Some(reasons) = moderate_nsfw_score(score, tolerance) {
            // Not stored: a moderated image is never served.
            return Ok(Outcome::Moderated {
                kind: ModerationKind::Content,
                reasons,
            });
        }
    }
    let ext = request.output_format.as_str();
    let sample_key = delivery::sample_key(&format!("{}.{ext}", task.id));
    state
        .blobs()
        .put(
            &sample_key,
            Bytes::from(generated.bytes),
            delivery::content_type(ext),
        )
        .await
        .map_err(TaskFailure::store)?;
    Ok(Outcome::Ready(ReadyRecord {
        sample_key,
        prompt_used: prompt,
        seed_used: seed,
        start_time,
        end_time,
    }))
}

/// The prompt rewritten by the configured language model.
async fn upsample(state: &AppState, prompt: &str, seed: u64) -> Result<String, TaskFailure> {
    let upsampler = state.config().upsampler.as_ref().ok_or_else(|| {
        TaskFailure::user("Prompt upsampling is not configured on this server; submit with prompt_upsampling false")
    })?;
    match upsampler.upsample(prompt, seed).await {
        Ok(rewritten) => {
            tracing::info!(chars = rewritten.len(), "prompt upsampled");
            Ok(rewritten)
        }
        Err(err) => {
            tracing::warn!(%err, "prompt upsampling failed");
            Err(TaskFailure {
                retryable: err.is_retryable(),
                ..TaskFailure::user(format!("Prompt upsampling failed: {err}"))
            })
        }
    }
}

fn epoch_secs(t: SystemTime) -> f64 {
    // Milliseconds, as the store keeps them.
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0)
}
