use dcd::engine::stream::{Demux, Line};
fn demux(tty: bool, timestamps: bool, stream: &[u8], chunks: &[usize]) -> Vec<Line> {
    let mut d = Demux::new(tty, timestamps);
    let mut lines = Vec::new();
    let mut rest = stream;
    for &c in chunks.iter().cycle() {
        if rest.is_empty() { break; }
        let (now, later) = rest.split_at(c.clamp(1, rest.len()));
        d.push(now, &mut |l| lines.push(l));
        rest = later;
    }
    d.finish(&mut |l| lines.push(l));
    lines
}
struct Rng(u64);
impl Rng { fn next(&mut self) -> u64 { self.0 ^= self.0 >> 12; self.0 ^= self.0 << 25; self.0 ^= self.0 >> 27; self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) } }
#[test]
fn shrink() {
    let chunks = [9, 13, 41, 16, 24, 31, 14, 20, 60, 43, 56, 13, 37, 49];
    let mut stream = std::fs::read("/tmp/demux_fail.bin").unwrap();
    let bad = |s: &[u8]| demux(false, true, s, &chunks) != demux(false, true, s, &[usize::MAX]);
    assert!(bad(&stream));
    // shrink: drop from end, then from front, then single bytes
    loop {
        let mut changed = false;
        for cut in [1024, 256, 64, 16, 4, 1] {
            while stream.len() > cut && bad(&stream[..stream.len()-cut]) { stream.truncate(stream.len()-cut); changed = true; }
        }
        let mut i = 0;
        while i < stream.len() {
            let mut t = stream.clone(); t.remove(i);
            if bad(&t) { stream = t; changed = true; } else { i += 1; }
        }
        if !changed { break; }
    }
    println!("MIN {:?} len {}", stream, stream.len());
    let mut split_points = vec![]; let mut acc = 0; for c in chunks.iter().cycle() { acc += c; if acc >= stream.len() { break; } split_points.push(acc); }
    println!("splits {:?}", split_points);
    println!("whole {:?}", demux(false, true, &stream, &[usize::MAX]));
    println!("chunk {:?}", demux(false, true, &stream, &chunks));
}
