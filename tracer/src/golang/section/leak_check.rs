//! `--go-leak-check` in the Go section: arms the runtime's goroutine leak
//! detector, re-arms it after each run, and reports the goroutines it
//! proved leaked.

use std::collections::HashMap;

use super::{goroutines::last_frame, ProvenLeakSite};
use crate::{
    golang::runtime::{leakcheck::LeakCheck, process::GoProcess},
    symbolize::{Symbolizer, SymbolizerGone},
};

pub struct ProvenLeaks {
    /// The detector's trigger, or why there is none.
    check: Result<LeakCheck, String>,
    /// The GC count when it was last armed.
    armed_at: Option<u32>,
    /// Whether a GC has run the detector since attach.
    ran: bool,
}

impl ProvenLeaks {
    /// Arms the detector now (and says so), where the Go version has one.
    pub fn start(process: &mut GoProcess) -> Self {
        let mut leaks = ProvenLeaks {
            check: LeakCheck::of(&process.target),
            armed_at: None,
            ran: false,
        };
        leaks.arm(process);
        match &leaks.check {
            Ok(_) => eprintln!(
                "leaktrace: --go-leak-check: set runtime.work.goroutineLeak.pending in pid {}: the \
                 target's next GC runs the runtime's goroutine leak detector (and again after each \
                 run)",
                process.pid
            ),
            Err(why) => eprintln!("leaktrace: {why}"),
        }
        leaks
    }

    fn arm(&mut self, process: &mut GoProcess) {
        let Ok(check) = self.check else {
            return;
        };
        let Some(bias) = process.load_bias() else {
            return;
        };
        let gc = process.gc_count();
        match check.arm(process.pid, bias) {
            Ok(()) => self.armed_at = gc,
            Err(e) => {
                self.check = Err(format!(
                    "--go-leak-check: cannot write into pid {}: {e}",
                    process.pid
                ))
            }
        }
    }

    /// Goroutines the detector proved leaked, by site, once a GC ran it.
    pub async fn sites(
        &mut self,
        process: &mut GoProcess,
        notes: &mut Vec<String>,
        symbolizer: &Symbolizer,
    ) -> Result<Option<Vec<ProvenLeakSite>>, SymbolizerGone> {
        if let Err(why) = &self.check {
            notes.push(why.clone());
            return Ok(None);
        }
        if let (Some(armed), Some(now)) = (self.armed_at, process.gc_count()) {
            if now != armed {
                self.ran = true;
                // Leaks since then are found at the next run.
                self.arm(process);
            }
        }
        if !self.ran {
            notes.push(
                "--go-leak-check: the runtime's leak detector has not run yet (it runs at the \
                 target's next GC)"
                    .into(),
            );
            return Ok(None);
        }
        let all = match process.goroutines() {
            Ok(all) => all,
            Err(e) => {
                notes.push(format!("--go-leak-check: goroutines not read: {e}"));
                return Ok(None);
            }
        };
        let mut groups: HashMap<(u64, u64), u64> = HashMap::new();
        for g in all.iter().filter(|g| g.leaked) {
            *groups.entry((g.gopc, g.startpc)).or_default() += 1;
        }
        let by_addr = symbolizer
            .symbolize_set(groups.keys().map(|k| k.0), true)
            .await?;
        let mut sites: Vec<ProvenLeakSite> = groups
            .into_iter()
            .map(|((gopc, startpc), count)| ProvenLeakSite {
                count,
                created_by: last_frame(&by_addr, gopc),
                start: process.start_function(startpc),
            })
            .collect();
        sites.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.created_by.symbol.cmp(&b.created_by.symbol))
        });
        Ok(Some(sites))
    }
}
