//! The operator's HTTP endpoint: `/healthz`, `/readyz`, `/status`, `/metrics`.
//!
//! - `/healthz` (liveness: restart me if this fails): the loop is alive, that is, it
//!   went round by the time it said it would. Before every wait the loop records by
//!   when it will be back (a tick, a pass bounded by the max processing time, a
//!   deliberate backoff while Redis is away), so a worker that is only backing off
//!   stays alive (`"status":"backing_off"`), however long the backoff.
//! - `/readyz` (readiness: send me work / count me in): it can admit now. Redis
//!   answers and every script is loaded (a SCRIPT EXISTS, loading what is missing: a
//!   PING alone stays green while the script cache is gone), Kafka answers a metadata
//!   request, the latest cycle succeeded (so not before a cycle ran against a Redis
//!   that came back), and no served event's keys are found only in the other key
//!   layout.
//! - `/status`: the seed's GetStatus figures plus the last figures of every event.
//! - `/metrics`: Prometheus text exposition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::base::shutdown::Shutdown;
use crate::kafka::publisher::Publisher;
use crate::model::clock;
use crate::ops::stats::{EventSnapshot, Stats};
use crate::redis::scripts::Scripts;
use crate::redis::store::RedisConn;

/// What the handlers read.
pub(crate) struct HttpState {
    pub stats: Arc<Stats>,
    pub conn: RedisConn,
    pub scripts: Arc<Scripts>,
    pub publisher: Arc<Publisher>,
    pub worker_id: String,
    /// How late past its announced time the loop may be and still count as alive
    /// (scheduling slack: two intervals and a second).
    pub liveness_slack: Duration,
}

pub(crate) fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serve until shutdown.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    mut shutdown: Shutdown,
) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.recv().await })
        .await
    {
        tracing::error!(error = %e, "http endpoint stopped");
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    last_loop_ms_ago: Option<u64>,
    /// How long until the loop said it would be back (negative: overdue).
    loop_due_in_ms: i64,
}

async fn healthz(State(s): State<Arc<HttpState>>) -> Response {
    let last = s.stats.last_loop_ms.load(Ordering::Relaxed);
    let now = clock::now_ms();
    let started = s.stats.started_at_ms.load(Ordering::Relaxed);
    let due = match s.stats.loop_due_ms.load(Ordering::Relaxed) {
        0 => started,
        d => d,
    };
    let ok = now <= due.saturating_add(s.liveness_slack.as_millis() as u64);
    let backing_off = s.stats.backing_off.load(Ordering::Relaxed);
    let body = Health {
        status: match (ok, backing_off) {
            (false, _) => "stalled",
            (true, true) => "backing_off",
            (true, false) => "ok",
        },
        last_loop_ms_ago: (last != 0).then(|| now.saturating_sub(last)),
        loop_due_in_ms: due as i64 - now as i64,
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

#[derive(Serialize)]
struct Ready {
    ready: bool,
    redis: String,
    kafka: String,
    /// `ok`, `no cycle yet`, `backing off` or `last cycle failed`.
    cycle: String,
    /// `ok`, or the served events whose keys are only in the other key layout.
    key_layout: String,
}

async fn readyz(State(s): State<Arc<HttpState>>) -> Response {
    let redis = match tokio::time::timeout(Duration::from_secs(2), scripts_ready(&s)).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e,
        Err(_) => "timeout".to_owned(),
    };
    let publisher = s.publisher.clone();
    let kafka =
        match tokio::task::spawn_blocking(move || publisher.check(Duration::from_secs(2))).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
    let st = &s.stats;
    let ok_at = st.last_cycle_ok_ms.load(Ordering::Relaxed);
    let failed_at = st.last_cycle_failed_ms.load(Ordering::Relaxed);
    let cycle = if st.backing_off.load(Ordering::Relaxed) {
        "backing off"
    } else if ok_at == 0 {
        "no cycle yet"
    } else if failed_at > ok_at {
        "last cycle failed"
    } else {
        "ok"
    }
    .to_owned();
    let mismatch = st.layout_mismatch();
    let key_layout = if mismatch.is_empty() {
        "ok".to_owned()
    } else {
        format!(
            "keys of {} found only in the other key layout: check --key-layout",
            mismatch.join(", ")
        )
    };
    let ready = redis == "ok" && kafka == "ok" && cycle == "ok" && key_layout == "ok";
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Ready {
            ready,
            redis,
            kafka,
            cycle,
            key_layout,
        }),
    )
        .into_response()
}

/// A writable master (not a replica: after a failover the old master comes back as
/// one), and every script present in its cache (loading what is missing).
async fn scripts_ready(s: &HttpState) -> Result<(), String> {
    let mut conn = s.conn.clone();
    if !matches!(conn, crate::redis::store::RedisConn::Cluster(_)) {
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let master = matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master");
        if !master {
            return Err("connected to a replica, not a writable master".to_owned());
        }
    }
    let all = s.scripts.all();
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("EXISTS");
    for sc in all {
        cmd.arg(sc.sha());
    }
    let present: Vec<bool> = cmd
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    for (sc, here) in all.iter().zip(present) {
        if !here {
            sc.load(&mut conn).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[derive(Serialize)]
pub(crate) struct StatusBody {
    pub worker_id: String,
    pub is_running: bool,
    pub started_at: String,
    pub last_processed: Option<String>,
    pub total_admitted: u64,
    pub total_released: u64,
    pub total_expired: u64,
    pub total_published: u64,
    pub error_count: u64,
    /// While admission is held after a new Redis master was seen: how much longer (ms).
    pub failover_hold_ms: Option<u64>,
    /// How this replica shares the events with the others (issue 14).
    pub ownership: OwnershipBody,
    pub events: BTreeMap<String, EventSnapshot>,
}

/// Event ownership as this replica last saw it.
#[derive(Serialize)]
pub(crate) struct OwnershipBody {
    /// Whether it shares the events (false: it passes every event, ownership being
    /// off or the list of owners unreadable).
    pub shared: bool,
    /// Events it owns and passes (served and retired).
    pub owned_events: u64,
    /// Replicas sharing the events, itself included.
    pub live_replicas: u64,
}

async fn status(State(s): State<Arc<HttpState>>) -> Json<StatusBody> {
    let st = &s.stats;
    let last = st.last_processed_ms.load(Ordering::Relaxed);
    Json(StatusBody {
        worker_id: s.worker_id.clone(),
        is_running: st.last_loop_ms.load(Ordering::Relaxed) != 0,
        started_at: clock::rfc3339_seconds(st.started_at_ms.load(Ordering::Relaxed)),
        last_processed: (last != 0).then(|| clock::rfc3339_millis(last)),
        total_admitted: Stats::get(&st.admitted),
        total_released: Stats::get(&st.released),
        total_expired: Stats::get(&st.expired),
        total_published: Stats::get(&st.published),
        error_count: Stats::get(&st.errors),
        failover_hold_ms: {
            let until = st.failover_hold_until_ms.load(Ordering::Relaxed);
            let now = clock::now_ms();
            (until > now).then(|| until - now)
        },
        ownership: OwnershipBody {
            shared: st.ownership_shared.load(Ordering::Relaxed),
            owned_events: st.owned_events.load(Ordering::Relaxed),
            live_replicas: st.owner_replicas.load(Ordering::Relaxed),
        },
        events: st.events(),
    })
}

async fn metrics(State(s): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.stats.encode_prometheus(),
    )
        .into_response()
}
