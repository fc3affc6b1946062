//! Load generator for etcd shaped like `kvctl bench`, for the same-run baseline in
//! docs/benchmarks.md (see docs/bench-etcd.sh). Not part of the workspace: it needs protoc.
//!
//! usage: etcdbench ENDPOINTS put|get-strong|get-serializable CLIENTS CONNECTIONS SECONDS

// N clients over C connections, random keys of a fixed key space, fixed-size values; prints
// ops/s and p50/p99 in microseconds.
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use rand::Rng;
use tokio::sync::Mutex;

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let endpoints: Vec<String> = a[1].split(',').map(String::from).collect();
    let workload = a[2].clone(); // put | get-strong | get-serializable
    let clients: usize = a[3].parse().unwrap();
    let conns: usize = a[4].parse().unwrap();
    let secs: u64 = a[5].parse().unwrap();
    let keys = 10_000u32;
    let value = vec![b'x'; 128];
    let mut pool = Vec::new();
    for i in 0..conns {
        // Each connection to one member, round robin, as etcd's benchmark tool does.
        let ep = endpoints[i % endpoints.len()].clone();
        pool.push(Client::connect([ep], None).await.expect("connect"));
    }
    if workload != "put" {
        let mut c = pool[0].clone();
        for k in 0..keys {
            c.put(format!("key{k:08}"), value.clone(), None).await.unwrap();
        }
    }
    let hist = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new(3).unwrap()));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut c = pool[i % conns].clone();
        let hist = hist.clone();
        let value = value.clone();
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let mut errors = 0u64;
            while Instant::now() < end {
                let k = format!("key{:08}", rand::thread_rng().gen_range(0..keys));
                let t = Instant::now();
                let ok = match workload.as_str() {
                    "put" => c.put(k, value.clone(), None).await.is_ok(),
                    "get-strong" => c.get(k, None).await.is_ok(),
                    _ => c.get(k, Some(GetOptions::new().with_serializable())).await.is_ok(),
                };
                if ok {
                    local.record(t.elapsed().as_micros() as u64).unwrap();
                } else {
                    errors += 1;
                }
            }
            hist.lock().await.add(local).unwrap();
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap();
    }
    let h = hist.lock().await;
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "etcd {workload} clients={clients} conns={conns} ops/s={:.0} p50={} p99={} errors={errors}",
        h.len() as f64 / elapsed,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99)
    );
}
