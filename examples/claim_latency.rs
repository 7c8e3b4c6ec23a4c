//! What shared state costs a forwarded message in store round trips, as the forward path makes
//! them: the retry table looks for a kept answer (GET), the message is claimed (SET NX PX) and
//! the answer is stored (SET PX). Timed on the process's own memory
//! and on each Redis URL given. Used by `benches/shared_state.py`:
//!
//! ```sh
//! cargo run --release --features redis --example claim_latency -- 5000 redis://127.0.0.1:6379/0
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};
use weixin_fcgi::forward::claim::{Claims, Found, Keys};
use weixin_fcgi::state::redis::RedisStore;
use weixin_fcgi::state::{self, MemoryStore, Store};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(count) = args.first().and_then(|n| n.parse::<u32>().ok()) else {
        eprintln!("usage: claim_latency COUNT [REDIS_URL…]");
        std::process::exit(2);
    };
    // A rendered text reply is a few hundred bytes (tag byte first, as the retry table stores it).
    let mut answer = vec![1u8];
    answer.extend_from_slice(&[b'x'; 400]);
    let mut stores: Vec<(String, Arc<dyn Store>)> =
        vec![("memory".into(), Arc::new(MemoryStore::new(4 << 20)))];
    for url in &args[1..] {
        match RedisStore::open(url) {
            Ok(s) => stores.push((url.clone(), Arc::new(s))),
            Err(e) => {
                eprintln!("{url}: {e}");
                std::process::exit(2);
            }
        }
    }
    let run = std::process::id();
    for (n, (name, store)) in stores.into_iter().enumerate() {
        let claims = Claims::new(Arc::clone(&store));
        let mut micros: Vec<f64> = Vec::with_capacity(count as usize);
        for i in 0..count {
            let answer_key = state::key("bench", "answer", &format!("{run}-{n}-{i}"));
            let keys = Keys::new("bench", &answer_key);
            let started = Instant::now();
            let kept = store.get(&keys.answer);
            let found = claims.claim_or_look(&keys, Duration::from_secs(10));
            let stored = store.put(&keys.answer, &answer, Duration::from_secs(30));
            micros.push(started.elapsed().as_secs_f64() * 1e6);
            assert!(
                matches!(kept, Ok(None)) && found == Found::Claimed && stored.is_ok(),
                "{name}: a fresh message is claimed and answered"
            );
        }
        micros.sort_by(f64::total_cmp);
        let pick = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)];
        println!(
            "lookup+claim+answer {name}: median {:.1} µs, p99 {:.1} µs over {count}",
            pick(0.5),
            pick(0.99)
        );
    }
}
