//! The `best` routing strategy: a role declared `{agents: [...], strategy: best}` gets its chain
//! ordered, when each task is accepted, by the agents' recent record in the daemon's book —
//! success rate first, then cost per success. The order is recorded in the task's `received`
//! event, so a restart replays the same decision.
//!
//! Two floors keep it honest: an agent with fewer than [`MIN_SAMPLES`] recent attempts goes
//! first (it has to be tried to be judged), and every [`EXPLORE_EVERY`]th task keeps the
//! configured order, so an agent that fell behind gets fresh data to come back with.

use std::collections::HashMap;

use crate::judge::Class;
use crate::state::TaskBook;

/// Recent attempts per agent that the score looks at.
pub const WINDOW: usize = 50;
/// Below this many recent attempts an agent is tried first.
pub const MIN_SAMPLES: usize = 5;
/// One task in this many keeps the configured order.
pub const EXPLORE_EVERY: u64 = 10;

/// An agent's recent record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Score {
    pub attempts: usize,
    pub ok: usize,
    pub cost_usd: f64,
}

impl Score {
    fn success_rate(&self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.ok as f64 / self.attempts as f64
        }
    }
    fn cost_per_success(&self) -> f64 {
        if self.ok == 0 {
            f64::INFINITY
        } else {
            self.cost_usd / self.ok as f64
        }
    }
}

/// Each agent's score over its most recent [`WINDOW`] counted attempts in the book.
pub fn scores(book: &TaskBook) -> HashMap<String, Score> {
    let mut recent: HashMap<&str, Vec<(u64, bool, f64)>> = HashMap::new();
    for t in book.iter() {
        for a in t.attempts() {
            let Some(class) = a.class else { continue };
            if matches!(class, Class::Interrupted | Class::Cancelled) {
                continue;
            }
            let cost = a.usage.as_ref().and_then(|u| u.cost_usd).unwrap_or(0.0);
            recent
                .entry(&a.agent)
                .or_default()
                .push((a.started_ms, class == Class::Ok, cost));
        }
    }
    recent
        .into_iter()
        .map(|(agent, mut v)| {
            v.sort_by_key(|(ts, _, _)| std::cmp::Reverse(*ts));
            v.truncate(WINDOW);
            let score = Score {
                attempts: v.len(),
                ok: v.iter().filter(|(_, ok, _)| *ok).count(),
                cost_usd: v.iter().map(|(_, _, c)| c).sum(),
            };
            (agent.to_string(), score)
        })
        .collect()
}

/// `chain` ordered best first: agents short of data in their configured order, then by success
/// rate (higher first), then cost per success (lower first), then the configured order.
pub fn rank(chain: &[String], scores: &HashMap<String, Score>) -> Vec<String> {
    let empty = Score::default();
    let mut order: Vec<(usize, &String)> = chain.iter().enumerate().collect();
    order.sort_by(|(ia, a), (ib, b)| {
        let (sa, sb) = (
            scores.get(*a).unwrap_or(&empty),
            scores.get(*b).unwrap_or(&empty),
        );
        let (na, nb) = (sa.attempts < MIN_SAMPLES, sb.attempts < MIN_SAMPLES);
        nb.cmp(&na)
            .then_with(|| {
                if na {
                    std::cmp::Ordering::Equal
                } else {
                    sb.success_rate()
                        .total_cmp(&sa.success_rate())
                        .then(sa.cost_per_success().total_cmp(&sb.cost_per_success()))
                }
            })
            .then(ia.cmp(ib))
    });
    order.into_iter().map(|(_, a)| a.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(attempts: usize, ok: usize, cost: f64) -> Score {
        Score {
            attempts,
            ok,
            cost_usd: cost,
        }
    }

    #[test]
    fn ranks_by_success_then_cost_with_new_agents_first() {
        let chain: Vec<String> = ["a", "b", "c", "d"].iter().map(|x| x.to_string()).collect();
        let scores = HashMap::from([
            ("a".to_string(), s(10, 5, 1.0)),
            ("b".to_string(), s(10, 9, 9.0)),
            ("c".to_string(), s(10, 9, 0.9)),
            ("d".to_string(), s(2, 0, 0.0)),
        ]);
        // d lacks data: first; then c and b at 90% (c cheaper), then a at 50%.
        assert_eq!(rank(&chain, &scores), ["d", "c", "b", "a"]);
        assert_eq!(rank(&chain, &HashMap::new()), ["a", "b", "c", "d"]);
    }
}
