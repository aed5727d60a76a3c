//! Micro-benchmark of the SFTP packet framer and request decoder
//! (`cargo bench -p dropgate-sftp`): a pipelined stream of WRITE, READ and
//! STAT requests as OpenSSH sends them during a transfer.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dropgate_sftp::bench_support::decode_stream;

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(kind: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(9 + body.len());
    p.extend_from_slice(&((body.len() + 5) as u32).to_be_bytes());
    p.push(kind);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(body);
    p
}

fn stream(writes: usize, payload: usize) -> Vec<u8> {
    const WRITE: u8 = 6;
    const READ: u8 = 5;
    const STAT: u8 = 17;
    let handle = b"h0000001";
    let data = vec![0xabu8; payload];
    let mut out = Vec::new();
    for i in 0..writes {
        let mut body = Vec::new();
        string(&mut body, handle);
        body.extend_from_slice(&((i * payload) as u64).to_be_bytes());
        string(&mut body, &data);
        out.extend(packet(WRITE, i as u32, &body));
        let mut body = Vec::new();
        string(&mut body, handle);
        body.extend_from_slice(&((i * payload) as u64).to_be_bytes());
        body.extend_from_slice(&(payload as u32).to_be_bytes());
        out.extend(packet(READ, i as u32, &body));
        let mut body = Vec::new();
        string(&mut body, b"/inbox/orders-2026-11-21.csv");
        out.extend(packet(STAT, i as u32, &body));
    }
    out
}

fn decode(c: &mut Criterion) {
    let bytes = stream(64, 32 * 1024);
    assert_eq!(decode_stream(&bytes), 64 * 3, "every request decodes");
    let mut g = c.benchmark_group("sftp_decoder");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("64_writes_reads_stats_32k", |b| {
        b.iter(|| black_box(decode_stream(black_box(&bytes))))
    });
    let small = stream(256, 16);
    g.throughput(Throughput::Elements(256 * 3));
    g.bench_function("768_small_requests", |b| {
        b.iter(|| black_box(decode_stream(black_box(&small))))
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
