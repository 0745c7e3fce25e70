//! JSON lines: one object per report. The schema is documented in the
//! docs/json.md; keep the two in step.

use std::{
    io::{self, Write},
    time::UNIX_EPOCH,
};
use tracer_common::{CounterKind, StackEnd};

use serde_json::{json, Value};

use super::{
    reachability::{verdict_name, ReachabilityReport, VERDICTS},
    suppressions::Suppressed,
    Report, SiteReport, ThreadSiteReport,
};
use crate::{collect::Dropped, golang::GoReport, symbolize::Frame};

pub fn write(out: &mut impl Write, r: &Report) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &to_value(r))?;
    out.write_all(b"\n")
}

fn to_value(r: &Report) -> Value {
    json!({
        "type": "heap_report",
        "seq": r.seq,
        "final": r.final_report,
        "target_exited": r.target_exited,
        "oom_killed": r.oom_killed,
        "timestamp_ms": r.timestamp.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "elapsed_ms": r.elapsed.as_millis() as u64,
        "pid": r.pid,
        "comm": r.comm,
        "pid_in_container": r.pid_in_container,
        "container_id": r.container_id,
        "container": r.container,
        "container_processes": r.container_processes.map(|c| json!({
            "traced": c.traced,
            "joined": c.joined,
            "left": c.left,
            "restarts": c.restarts,
        })),
        "memory_cgroup": r.memory_cgroup.as_ref().map(|m| json!({
            "path": m.path,
            "usage_bytes": m.usage,
            "limit_bytes": m.limit,
            "peak_bytes": m.peak,
            "oom_kills": m.oom_kills,
        })),
        "older_than_ms": r.older_than.as_millis() as u64,
        "heap_traced": r.heap_traced,
        "live_bytes": r.live_bytes,
        "live_blocks": r.live_blocks,
        "old_bytes": r.old_bytes,
        "old_blocks": r.old_blocks,
        "sites_total": r.sites_total,
        "dropped": by_name(&r.dropped, CounterKind::Dropped),
        "stacks_cut_short": by_name(&r.dropped, CounterKind::CutShort),
        "suppressed": r.suppressed.as_ref().map(Suppressed::to_json),
        "stacks": r.sites.iter().map(site).collect::<Vec<_>>(),
        "threads": r.threads.iter().map(thread_site).collect::<Vec<_>>(),
        "threads_before_attach": r.threads_before_attach.iter().map(|t| json!({
            "tid": t.tid,
            "name": t.name,
            "age_ms": t.age.as_millis() as u64,
        })).collect::<Vec<_>>(),
        "go": r.go.as_ref().map(go),
        "reachability": r.reachability.as_ref().map(reachability),
        "kernel": r.kernel.as_ref().map(super::kernel::to_json),
    })
}

fn reachability(r: &ReachabilityReport) -> Value {
    let totals: serde_json::Map<String, Value> = VERDICTS
        .iter()
        .zip(&r.totals)
        .map(|(v, a)| {
            (
                verdict_name(*v).to_string(),
                json!({"bytes": a.bytes, "blocks": a.blocks}),
            )
        })
        .collect();
    json!({
        "complete": r.incomplete.is_none(),
        "incomplete": r.incomplete,
        "stopped_us": r.stopped.as_micros() as u64,
        "blocks_read_us": r.blocks_read.as_micros() as u64,
        "threads": r.threads,
        "scanned_bytes": r.scanned_bytes,
        "unreadable_bytes": r.unreadable_bytes,
        "go_heap_not_scanned": r.go_heap_not_scanned,
        "at_exit": r.at_exit,
        "totals": totals,
        "definitely_lost_growth_bytes": r.definitely_lost_growth,
        "records": r.records.iter().map(|l| json!({
            "kind": verdict_name(l.verdict),
            "bytes": l.bytes,
            "blocks": l.blocks,
            "indirect_bytes": l.indirect_bytes,
            "frames": l.frames.iter().map(frame).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The counters of `kind`, by their names.
fn by_name(d: &Dropped, kind: CounterKind) -> Value {
    Value::Object(
        d.by_name(kind)
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect(),
    )
}

fn go(g: &GoReport) -> Value {
    json!({
        "version": g.version,
        "goroutines_live": g.goroutines_live,
        "goroutines": g.goroutines.iter().map(|s| json!({
            "count": s.count,
            "oldest_age_ms": s.oldest.as_millis() as u64,
            "growth": s.growth,
            "trend": s.trend.name(),
            "created_by": frame(&s.created_by),
            "start_function": s.start,
            "frames": s.frames.iter().map(frame).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "goroutines_before_attach": g.before_attach.as_ref().map(|sites| sites.iter().map(|s| json!({
            "count": s.count,
            "created_by": frame(&s.created_by),
            "start_function": s.start,
            "states": s.states.iter().map(|(state, n)| json!({"state": state, "count": n})).collect::<Vec<_>>(),
            "longest_blocked_ms": s.longest_blocked.map(|d| d.as_millis() as u64),
        })).collect::<Vec<_>>()),
        "heap": g.heap.as_ref().map(|h| json!({
            "live_after_gc_bytes": h.live_after_gc,
            "gc_count": h.gc_count,
            "gcs_since_last": h.gcs_since_last,
            "growth_bytes": h.growth,
            "trend": h.trend,
        })),
        "heap_profile": g.heap_profile.as_ref().map(|sites| sites.iter().map(|s| json!({
            "bytes": s.bytes,
            "objects": s.objects,
            "growth_bytes": s.growth,
            "trend": s.trend,
            "frames": s.frames.iter().map(frame).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()),
        "memstats": g.memstats.map(|m| json!({
            "heap_alloc": m.heap_alloc,
            "heap_inuse": m.heap_inuse,
            "heap_objects": m.heap_objects,
            "num_gc": m.num_gc,
            "next_gc": m.next_gc,
            "sys": m.sys,
            "stack_inuse": m.stack_inuse,
            "goroutines": m.goroutines,
            "gomaxprocs": m.gomaxprocs,
            "os_threads": m.os_threads,
            "rss_bytes": m.rss_bytes,
        })),
        "goroutines_proven_leaked": g.proven_leaked.as_ref().map(|sites| sites.iter().map(|s| json!({
            "count": s.count,
            "created_by": frame(&s.created_by),
            "start_function": s.start,
        })).collect::<Vec<_>>()),
        "notes": g.notes,
    })
}

fn thread_site(t: &ThreadSiteReport) -> Value {
    json!({
        "kind": t.kind,
        "count": t.count,
        "oldest_age_ms": t.oldest.as_millis() as u64,
        "growth": t.growth,
        "trend": t.trend.name(),
        "stack_bytes": t.stack_bytes,
        "spawned_by": t.spawned_by,
        "cut_short": t.cut_short.map(StackEnd::name),
        "frames": t.frames.iter().map(frame).collect::<Vec<_>>(),
    })
}

fn site(s: &SiteReport) -> Value {
    json!({
        "bytes": s.bytes,
        "blocks": s.blocks,
        "oldest_age_ms": s.oldest.as_millis() as u64,
        "growth_bytes": s.growth,
        "trend": s.trend.name(),
        "allocator": s.allocator,
        "stack_lost": s.stack_lost,
        "cut_short": s.cut_short.map(StackEnd::name),
        "frames": s.frames.iter().map(frame).collect::<Vec<_>>(),
    })
}

fn frame(f: &Frame) -> Value {
    json!({
        "address": format!("{:#x}", f.address),
        "symbol": f.symbol,
        "module": f.module,
        "file": f.file,
        "line": f.line,
        "inlined": f.inlined,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collect::Dropped, report::aggregate::Trend};
    use std::time::{Duration, SystemTime};

    #[test]
    fn one_line_with_schema_fields() {
        let r = Report {
            seq: 2,
            final_report: true,
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_millis(1234),
            elapsed: Duration::from_millis(5000),
            pid: 42,
            comm: "demo".into(),
            pid_in_container: Some(1),
            container_id: None,
            container: None,
            older_than: Duration::from_millis(500),
            heap_traced: true,
            live_bytes: 300,
            live_blocks: 3,
            old_bytes: 200,
            old_blocks: 2,
            sites_total: 1,
            sites: vec![SiteReport {
                bytes: 200,
                blocks: 2,
                oldest: Duration::from_millis(4000),
                growth: Some(100),
                trend: Trend::Growing,
                allocator: Some("calloc".into()),
                stack_lost: false,
                cut_short: Some(StackEnd::DepthLimit),
                frames: vec![Frame {
                    address: 0x401000,
                    symbol: Some("leak".into()),
                    module: Some("demo".into()),
                    file: Some("demo.c".into()),
                    line: Some(7),
                    inlined: false,
                    location: None,
                }],
            }],
            dropped: Dropped::from_counts({
                let mut counts = [0; tracer_common::COUNTER_COUNT as usize];
                counts[tracer_common::Counter::StackLost as usize] = 3;
                counts
            }),
            threads: vec![ThreadSiteReport {
                kind: "thread",
                count: 4,
                oldest: Duration::from_millis(900),
                growth: Some(1),
                trend: Trend::New,
                stack_bytes: 4 << 23,
                spawned_by: Some("pthread_create".into()),
                cut_short: None,
                frames: vec![],
            }],
            threads_before_attach: vec![super::super::ExistingThreadReport {
                tid: 42,
                name: "main".into(),
                age: Duration::from_secs(60),
            }],
            go: None,
            target_exited: false,
            oom_killed: true,
            memory_cgroup: Some(crate::process::memcg::MemoryCgroupReading {
                path: "/docker/abc".into(),
                usage: 1000,
                limit: Some(4096),
                peak: Some(4096),
                oom_kills: 1,
            }),
            profiles: None,
            suppressed: None,
            container_processes: None,
            reachability: None,
            kernel: None,
        };
        let mut buf = Vec::new();
        write(&mut buf, &r).expect("writes");
        let text = String::from_utf8(buf).expect("utf8");
        assert_eq!(text.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(&text).expect("valid json");
        assert_eq!(v["type"], "heap_report");
        assert_eq!(v["timestamp_ms"], 1234);
        assert_eq!(v["pid_in_container"], 1);
        assert!(v["container_id"].is_null());
        assert_eq!(v["dropped"]["stacks_lost"], 3);
        assert_eq!(v["stacks"][0]["bytes"], 200);
        assert_eq!(v["stacks"][0]["allocator"], "calloc");
        assert_eq!(v["stacks"][0]["growth_bytes"], 100);
        assert_eq!(v["stacks"][0]["trend"], "growing");
        assert_eq!(v["threads"][0]["trend"], "new");
        assert_eq!(v["stacks"][0]["frames"][0]["address"], "0x401000");
        assert_eq!(v["stacks"][0]["cut_short"], "depth-limit");
        assert_eq!(v["threads"][0]["cut_short"], Value::Null);
        assert_eq!(v["stacks"][0]["frames"][0]["line"], 7);
        assert_eq!(v["threads"][0]["count"], 4);
        assert_eq!(v["threads"][0]["stack_bytes"], 4u64 << 23);
        assert_eq!(v["threads"][0]["spawned_by"], "pthread_create");
        assert_eq!(v["threads_before_attach"][0]["age_ms"], 60000);
        assert_eq!(v["oom_killed"], true);
        assert_eq!(
            v["memory_cgroup"],
            json!({"path": "/docker/abc", "usage_bytes": 1000, "limit_bytes": 4096, "peak_bytes": 4096, "oom_kills": 1})
        );
    }
}
