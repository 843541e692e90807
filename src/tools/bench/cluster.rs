//! Section 8 of the bench: the full pass of section 5 on a private three-master Redis
//! Cluster (cluster layout, events spread over the masters by hash slot), and how
//! many pipelines its steady pass sent; and `bench --only cluster`, which runs just
//! that beside the single-server pass (issue 14: a cluster pass should cost about
//! what a single-server pass costs, now that pipelines go one per master).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    BenchError, BenchOptions, Env, full_pass, plain_env, redis_cpu, seed_events, settings,
};
use crate::model::keys::{KeyLayout, Keys};
use crate::redis::store::{self, Endpoint, PipelineCounts};
use crate::tools::redis_server::PrivateCluster;

/// One cluster pass measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClusterPass {
    /// Events.
    pub events: usize,
    /// The first pass (admitting everyone), ms.
    pub first_ms: f64,
    /// A steady pass (nothing to admit, reap or publish), ms.
    pub steady_ms: f64,
    /// Redis CPU of the steady pass, summed over the masters, ms.
    pub steady_cpu_ms: f64,
    /// Pipelines the steady pass sent to a master by address.
    pub steady_node_pipelines: u64,
    /// Pipelines the steady pass sent for one hash slot (single-slot pipelines,
    /// slots the map did not know).
    pub steady_slot_pipelines: u64,
}

/// `bench --only cluster`: per event count, the single-server full pass of section 5
/// and the same pass on the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// (events, first ms, steady ms, Redis CPU ms of the steady pass) on one server.
    pub single: Vec<(usize, f64, f64, f64)>,
    /// The same passes on the cluster.
    pub cluster: Vec<ClusterPass>,
}

/// 8. The full pass over `n` events on a private three-master cluster.
pub(super) async fn cluster_pass(env: &Env, n: usize) -> Result<ClusterPass, BenchError> {
    let cluster = PrivateCluster::start(false)?;
    let urls = cluster.urls();
    let prefix = format!("bench-cluster-{n}");
    let keys = Keys::new(&prefix, KeyLayout::Cluster);
    let mut conn = store::connect(
        &Endpoint::Cluster(vec![cluster.url(0)]),
        Duration::from_secs(5),
    )
    .await?;
    seed_events(&mut conn, &keys, n).await?;
    let mut w = super::start_worker(
        settings(env, &prefix)
            .redis_cluster(urls.split(','))
            // WAIT answers for one node: the cluster section runs without it.
            .replica_acks(0)
            .batch_size(10),
    )
    .await?;
    let mut nodes = Vec::new();
    for i in 0..cluster.ports.len() {
        nodes.push(
            redis::Client::open(cluster.url(i))?
                .get_multiplexed_async_connection()
                .await?,
        );
    }
    let cpu = || {
        let nodes = nodes.clone();
        async move {
            let mut sum = 0.0;
            for mut c in nodes {
                sum += redis_cpu(&mut c).await?;
            }
            Ok::<_, BenchError>(sum)
        }
    };
    // As `time_passes`, reading the worker's pipeline counts around the steady pass.
    let cycle = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(BenchError::Other("a cycle failed".into()))
        }
    };
    let t = Instant::now();
    cycle(w.cycle().await)?;
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    // Let the acknowledgements land and one more pass see the emptied outboxes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cycle(w.cycle().await)?;
    let cpu0 = cpu().await?;
    let before = w.redis_pipeline_counts().unwrap_or_default();
    let t = Instant::now();
    cycle(w.cycle().await)?;
    let steady_ms = t.elapsed().as_secs_f64() * 1e3;
    let after = w.redis_pipeline_counts().unwrap_or_default();
    let steady_cpu_ms = (cpu().await? - cpu0) * 1e3;
    // Dropping a worker closes its Kafka consumer, which blocks: not on an async thread.
    let _ = tokio::task::spawn_blocking(move || drop(w)).await;
    // `cluster` lives to here, past the timed passes.
    drop(cluster);
    Ok(pass(n, first_ms, steady_ms, steady_cpu_ms, before, after))
}

fn pass(
    events: usize,
    first_ms: f64,
    steady_ms: f64,
    steady_cpu_ms: f64,
    before: PipelineCounts,
    after: PipelineCounts,
) -> ClusterPass {
    ClusterPass {
        events,
        first_ms,
        steady_ms,
        steady_cpu_ms,
        steady_node_pipelines: after.node_pipelines.saturating_sub(before.node_pipelines),
        steady_slot_pipelines: after.slot_pipelines.saturating_sub(before.slot_pipelines),
    }
}

/// `bench --only cluster`: the single-server full pass and the cluster pass at 1,000
/// events and at `--events` (`--quick`: at most 200), nothing else. Uses the Redis
/// and Kafka given, or starts its own; without replica acks (the cluster runs
/// without them).
pub async fn run_cluster_only(mut a: BenchOptions) -> Result<ClusterReport, BenchError> {
    if a.quick {
        a.events = a.events.min(200);
    }
    let (mut env, _servers) = plain_env(&a).await?;
    let mut sizes = vec![1000.min(a.events), a.events];
    sizes.dedup();
    let mut report = ClusterReport {
        single: Vec::new(),
        cluster: Vec::new(),
    };
    for &n in &sizes {
        if !a.json {
            eprintln!("bench: full pass over {n} events, one server");
        }
        let (first, steady, cpu) = full_pass(&mut env, n).await?;
        report.single.push((n, first, steady, cpu));
        if !a.json {
            eprintln!("bench: full pass over {n} events on a three-master cluster");
        }
        report.cluster.push(cluster_pass(&env, n).await?);
    }
    Ok(report)
}

/// One report line per cluster pass: its figures, the pipelines of its steady pass,
/// and, when the single-server pass over as many events is in `single`, the ratio of
/// the steady passes.
pub fn render_cluster_line(p: &ClusterPass, single: &[(usize, f64, f64, f64)]) -> String {
    let ratio = single
        .iter()
        .find(|(n, ..)| *n == p.events)
        .map(|(_, _, steady, _)| format!(", {:.2}x one server", p.steady_ms / steady))
        .unwrap_or_default();
    format!(
        "cluster (3 masters), {:>6} events: {:>8.1} ms admitting, {:>8.1} ms steady ({:.1} ms Redis CPU, all masters; {} pipelines by master, {} by slot{ratio})\n",
        p.events,
        p.first_ms,
        p.steady_ms,
        p.steady_cpu_ms,
        p.steady_node_pipelines,
        p.steady_slot_pipelines,
    )
}

/// The report of `bench --only cluster` as a table.
pub fn render_cluster_only(r: &ClusterReport) -> String {
    let mut t = String::new();
    for (n, first, steady, cpu) in &r.single {
        t.push_str(&format!(
            "full pass over {n:>6} events: {first:>8.1} ms admitting, {steady:>8.1} ms steady ({cpu:.1} ms Redis CPU)\n"
        ));
    }
    for p in &r.cluster {
        t.push_str(&render_cluster_line(p, &r.single));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_line_names_pipelines_and_the_ratio_to_one_server() {
        let p = pass(
            1000,
            200.0,
            24.0,
            10.0,
            PipelineCounts::default(),
            PipelineCounts {
                node_pipelines: 6,
                slot_pipelines: 1,
                ..Default::default()
            },
        );
        let line = render_cluster_line(&p, &[(1000, 250.0, 20.0, 8.0)]);
        assert!(
            line.contains("6 pipelines by master, 1 by slot, 1.20x one server"),
            "{line}"
        );
        assert!(!render_cluster_line(&p, &[]).contains("one server"));
    }
}
