//! Micro-benchmarks of the FTP hot paths that involve no I/O: the command
//! parser and the listing formatters (`cargo bench -p dropgate-ftp`).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dropgate_ftp::bench_support::{list_line, mlsd_line, parse_line};
use dropgate_vfs::{FileKind, Metadata};

const LINES: &[&[u8]] = &[
    b"USER partner-acme",
    b"PASS correct horse battery staple",
    b"TYPE I",
    b"EPSV",
    b"PASV",
    b"EPRT |1|127.0.0.1|50123|",
    b"PORT 127,0,0,1,195,80",
    b"CWD /inbox/2026/11",
    b"MLSD",
    b"LIST -la",
    b"REST 1048576",
    b"STOR orders-2026-11-21.csv",
    b"RETR /outbox/prices \xc3\xa9t\xc3\xa9.csv",
    b"RNFR a.tmp",
    b"RNTO a.csv",
    b"MFMT 20261121120000 a.csv",
    b"HASH big.bin",
    b"NOOP",
];

fn parser(c: &mut Criterion) {
    let mut g = c.benchmark_group("ftp_parser");
    g.throughput(Throughput::Elements(LINES.len() as u64));
    g.bench_function("typical_session_lines", |b| {
        b.iter(|| {
            for line in LINES {
                black_box(parse_line(black_box(line)));
            }
        })
    });
    g.finish();
}

fn listing(c: &mut Criterion) {
    let now = SystemTime::now();
    let meta = Metadata {
        kind: FileKind::File,
        size: 1_234_567,
        modified: now - Duration::from_secs(3600),
        accessed: now,
        mode: 0o100644,
        nlink: 1,
        unique: 0x1f2e3d,
    };
    let old = Metadata {
        modified: now - Duration::from_secs(400 * 24 * 3600),
        ..meta.clone()
    };
    let mut g = c.benchmark_group("ftp_listing");
    g.throughput(Throughput::Elements(2));
    g.bench_function("list_line", |b| {
        b.iter(|| {
            black_box(list_line(
                black_box("orders-2026-11-21.csv"),
                black_box(&meta),
                now,
            ));
            black_box(list_line(
                black_box("archive-2025.zip"),
                black_box(&old),
                now,
            ));
        })
    });
    g.bench_function("mlsd_line", |b| {
        b.iter(|| {
            black_box(mlsd_line(
                black_box("orders-2026-11-21.csv"),
                black_box(&meta),
            ));
            black_box(mlsd_line(black_box("archive-2025.zip"), black_box(&old)));
        })
    });
    g.finish();
}

criterion_group!(benches, parser, listing);
criterion_main!(benches);
