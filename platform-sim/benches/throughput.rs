//! How many small `change:` frames per second one simulator session
//! absorbs. A raw client on a plain `TcpStream` writes pre-built, masked
//! frames in big batches, so the client costs almost nothing and the number
//! measured is the simulator's (one actix worker thread).
//!
//! Run: `cargo bench -p platform-sim --bench throughput`
//! (`SIM_BENCH_FRAMES=N` changes the frame count of the counting-only run.)

#[path = "../tests/util/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use platform_sim::{CounterSnapshot, SimConfig, SimHandle, Simulator};

const BATCH: usize = 1000;
const USER: &str = "bench";
const PASSWORD: &str = "bench-pw";

fn main() {
    let frames: u64 = std::env::var("SIM_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");

    println!("platform-sim throughput: {BATCH}-frame batches over one WebSocket");
    for (mode, record, n) in [("counting-only", false, frames), ("full recording", true, frames / 5)] {
        let sim = Simulator::spawn(SimConfig {
            user: USER.into(),
            password: PASSWORD.into(),
            record_events: record,
            ..SimConfig::default()
        })
        .expect("simulator starts");
        let (rate, bytes) = run(&runtime, &sim, n);
        println!(
            "{mode:>15}: {n} frames of {bytes} bytes -> {:.2} M frames/s ({:.0} MB/s)",
            rate / 1e6,
            rate * bytes as f64 / 1e6
        );
        runtime.block_on(sim.stop()).expect("stops");
    }
}

fn counters(runtime: &tokio::runtime::Runtime, sim: &SimHandle) -> CounterSnapshot {
    runtime.block_on(sim.counters())
}

/// Blasts `n` frames; returns frames per second and the frame size.
fn run(runtime: &tokio::runtime::Runtime, sim: &SimHandle, n: u64) -> (f64, usize) {
    let mut stream = TcpStream::connect(sim.local_addr()).expect("connect");
    stream.set_nodelay(true).ok();
    stream
        .write_all(frames::handshake_request(&sim.local_addr().to_string(), "/ws").as_bytes())
        .expect("handshake");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("handshake answer");
        answer.push(byte[0]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 101"), "handshake refused");

    let mut creds = Vec::new();
    let login = format!(r#"{{"user":"{USER}","pw":"{PASSWORD}"}}"#);
    frames::encode_masked(&mut creds, frames::TEXT, login.as_bytes(), [9, 8, 7, 6]);
    stream.write_all(&creds).expect("credentials");
    let deadline = Instant::now() + Duration::from_secs(10);
    while counters(runtime, sim).sessions_authenticated == 0 {
        assert!(Instant::now() < deadline, "credentials not accepted");
        std::thread::sleep(Duration::from_millis(1));
    }

    let payload = br#"change:{"device_url":"meter-17","service_url":"power","service_name":"Power","time":"1500000000","task_id":"","protocol_parts":[{"name":"body","value":"{'unit': 'kW', 'value': '1.43'}"}],"device_instance_id":"","worker_id":"","output_name":""}"#;
    let mut batch = Vec::with_capacity(BATCH * (payload.len() + 8));
    for i in 0..BATCH {
        let mask = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes();
        frames::encode_masked(&mut batch, frames::TEXT, payload, mask);
    }
    let frame_bytes = batch.len() / BATCH;
    let batches = n.div_ceil(BATCH as u64);
    let total = batches * BATCH as u64;

    let start = Instant::now();
    for _ in 0..batches {
        stream.write_all(&batch).expect("write");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = counters(runtime, sim).changes;
        if seen >= total {
            break;
        }
        assert!(Instant::now() < deadline, "only {seen} of {total} frames counted");
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let c = counters(runtime, sim);
    assert_eq!(c.bad_frames, 0, "the benchmark frames are all good");
    (total as f64 / elapsed, frame_bytes)
}
