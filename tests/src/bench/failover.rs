//! Failover under load: signal the leader (bully's coordinator, etcd's Raft leader) again and
//! again while workers run, and measure each stall: the longest time without any
//! acknowledgement from the signal until the victim is restarted (by then a new leader is
//! agreed and acknowledgements flow again).
//!
//! A repetition without a failover is an error, never a measurement: the victim must be the
//! agreed leader, must exit, and another member must be agreed on before the stall counts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::load::{self, Load, Target, Window};

/// How long any one step of a repetition may take before the measurement fails.
const STEP: Duration = Duration::from_secs(30);

/// A replicated system whose members the benchmark can signal and restart.
// Used only from the report's own task: the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Replicated {
    fn name(&self) -> &'static str;
    /// The member every live member agrees leads (not `except`), waiting up to `within`.
    async fn agreed_leader(&self, except: Option<usize>, within: Duration)
    -> Result<usize, String>;
    fn signal(&mut self, member: usize, signal: Signal) -> Result<(), String>;
    async fn await_exit(&mut self, member: usize, within: Duration) -> Result<(), String>;
    /// Starts the member again and waits until it follows the agreed leader.
    async fn restart(&mut self, member: usize, within: Duration) -> Result<(), String>;
}

/// One repetition.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stall {
    pub stall_ms: f64,
    /// Commands that failed (deadline passed) in the repetition.
    pub failed: usize,
    /// From the signal until every live member agreed on the new leader.
    pub agreed_ms: f64,
}

/// Every repetition of one kind of failover.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Failovers {
    pub system: String,
    pub signal: String,
    pub workers: u32,
    pub stalls: Vec<Stall>,
    /// The longest stall between repetitions (restarts included): should be small.
    pub longest_stall_between_ms: f64,
}

impl Failovers {
    /// Percentile of the stalls in ms (nearest rank).
    pub fn stall_percentile(&self, p: f64) -> Option<f64> {
        let mut stalls: Vec<f64> = self.stalls.iter().map(|s| s.stall_ms).collect();
        stalls.sort_by(f64::total_cmp);
        load::percentile(&stalls, p)
    }

    pub fn failed(&self) -> usize {
        self.stalls.iter().map(|s| s.failed).sum()
    }
}

/// Runs `load` on `target` and signals the leader `reps` times.
pub async fn measure<S: Replicated, T: Target>(
    system: &mut S,
    target: &T,
    load: &Load,
    signal: Signal,
    reps: usize,
    progress: &dyn Fn(String),
) -> Result<Failovers, String> {
    system.agreed_leader(None, STEP).await?;
    // The window is closed by `stop`; its end only bounds a run that went wrong.
    let window = Window::after(Duration::ZERO, STEP * (4 * reps as u32 + 1));
    let (tally, marks) = {
        let run = load::run(target, load, &window);
        let kills = async {
            let result = repeat(system, &window, signal, reps, progress).await;
            window.stop.store(true, Ordering::Relaxed);
            result
        };
        tokio::join!(run, kills)
    };
    let marks = marks?;
    let stalls = marks
        .iter()
        .map(|m| Stall {
            stall_ms: ms(load::longest_gap(&tally.acked_at, m.signalled, m.restarted)),
            failed: tally
                .failed_at
                .iter()
                .filter(|t| **t >= m.signalled && **t <= m.restarted)
                .count(),
            agreed_ms: ms(m.agreed - m.signalled),
        })
        .collect();
    let between = marks
        .windows(2)
        .map(|w| load::longest_gap(&tally.acked_at, w[0].restarted, w[1].signalled))
        .max()
        .unwrap_or_default();
    Ok(Failovers {
        system: system.name().into(),
        signal: signal.as_str().trim_start_matches("SIG").into(),
        workers: load.workers,
        stalls,
        longest_stall_between_ms: ms(between),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// When one repetition's events happened.
struct Marks {
    signalled: Instant,
    agreed: Instant,
    restarted: Instant,
}

async fn repeat<S: Replicated>(
    system: &mut S,
    window: &Window,
    signal: Signal,
    reps: usize,
    progress: &dyn Fn(String),
) -> Result<Vec<Marks>, String> {
    let mut marks = Vec::new();
    for rep in 1..=reps {
        // Acknowledgements must be flowing before the signal, or the stall would start early.
        acks_resume(window, Duration::from_millis(300)).await?;
        let victim = system.agreed_leader(None, STEP).await?;
        let signalled = Instant::now();
        system.signal(victim, signal)?;
        system.await_exit(victim, STEP).await?;
        let leader = system.agreed_leader(Some(victim), STEP).await?;
        let agreed = Instant::now();
        acks_resume(window, Duration::from_millis(300)).await?;
        let restarted = Instant::now();
        system.restart(victim, STEP).await?;
        progress(format!(
            "{} {} {rep}/{reps}: leader {victim} -> {leader}, agreed after {:.0} ms",
            system.name(),
            signal.as_str(),
            ms(agreed - signalled)
        ));
        marks.push(Marks {
            signalled,
            agreed,
            restarted,
        });
    }
    Ok(marks)
}

/// Waits until acknowledgements arrive again, then `settle` longer.
async fn acks_resume(window: &Window, settle: Duration) -> Result<(), String> {
    let before = window.acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + STEP;
    while window.acked.load(Ordering::Relaxed) == before {
        if Instant::now() > deadline {
            return Err(format!("no command was acknowledged for {STEP:?}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(settle).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::{Op, Request, Worker};

    /// A system that never agrees on a leader.
    struct Leaderless;

    impl Replicated for Leaderless {
        fn name(&self) -> &'static str {
            "leaderless"
        }
        async fn agreed_leader(&self, _: Option<usize>, _: Duration) -> Result<usize, String> {
            Err("no leader".into())
        }
        fn signal(&mut self, _: usize, _: Signal) -> Result<(), String> {
            panic!("signalled without a victim")
        }
        async fn await_exit(&mut self, _: usize, _: Duration) -> Result<(), String> {
            Ok(())
        }
        async fn restart(&mut self, _: usize, _: Duration) -> Result<(), String> {
            Ok(())
        }
    }

    struct Immediate;
    struct Answer;
    impl Target for Immediate {
        type Worker = Answer;
        fn worker(&self, _: u32) -> Answer {
            Answer
        }
    }
    impl Worker for Answer {
        async fn execute(&mut self, _: &Request) -> Result<(), String> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn no_victim_is_an_error_not_a_measurement() {
        let load = Load {
            op: Op::Incr,
            workers: 2,
            keys: 10,
            value_bytes: 1,
        };
        let result = measure(
            &mut Leaderless,
            &Immediate,
            &load,
            Signal::SIGKILL,
            3,
            &|_| {},
        )
        .await;
        assert_eq!(result.err().as_deref(), Some("no leader"));
    }
}
