//! What shared state costs a forwarded message: the claim before the backend call and the
//! answer after it (`forward::claim`), timed on the process's own memory and on each Redis URL
//! given. Used by `benches/shared_state.py`:
//!
//! ```sh
//! cargo run --release --features redis --example claim_latency -- 5000 redis://127.0.0.1:6379/0
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};
use weixin_fcgi::forward::claim::{Claims, Found};
use weixin_fcgi::state::redis::RedisStore;
use weixin_fcgi::state::{MemoryStore, Store};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(count) = args.first().and_then(|n| n.parse::<u32>().ok()) else {
        eprintln!("usage: claim_latency COUNT [REDIS_URL…]");
        std::process::exit(2);
    };
    let answer = vec![b'x'; 400]; // a rendered text reply is a few hundred bytes
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
        let claims = Claims::new(store);
        let mut micros: Vec<f64> = Vec::with_capacity(count as usize);
        for i in 0..count {
            let key = Claims::key("bench", &format!("m\0bench\0o\0{run}-{n}-{i}"));
            let started = Instant::now();
            let found = claims.claim_or_look(&key, Duration::from_secs(10));
            claims.finish(&key, Some(&answer), Duration::from_secs(30));
            micros.push(started.elapsed().as_secs_f64() * 1e6);
            assert!(found == Found::Claimed, "{name}: a fresh key is claimed");
        }
        micros.sort_by(f64::total_cmp);
        let pick = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)];
        println!(
            "claim+answer {name}: median {:.1} µs, p99 {:.1} µs over {count}",
            pick(0.5),
            pick(0.99)
        );
    }
}
