//! Incremental decoders for the engine's byte streams: the multiplexed
//! stdout/stderr framing of logs and exec, log lines with optional timestamps,
//! and newline-delimited JSON (pull progress, events). Every decoder accepts
//! input cut at arbitrary points, because socket reads are.

use serde_json::Value;

/// Longest line kept in memory; a longer one is emitted in pieces.
pub const MAX_LINE: usize = 1 << 20;

/// A timestamp longer than this is not one: the bytes are text.
const MAX_TS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Stdout,
    Stderr,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
        }
    }
}

/// One log line, without its line terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub source: Source,
    /// The engine's RFC3339Nano timestamp, when asked for.
    pub ts: Option<String>,
    pub text: String,
}

/// Where a piece of payload sits in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The first piece of a frame.
    FrameStart,
    /// A later piece of the same frame.
    InFrame,
    /// Raw (TTY) bytes: there are no frames.
    Raw,
}

/// Splits the engine's multiplexed stream (8-byte header: stream type, three
/// zero bytes, big-endian payload length; then the payload) into payload
/// pieces. Payloads are passed through as they arrive, never buffered, so a
/// hostile length costs no memory.
///
/// A header that is not a valid frame header means the stream was not
/// multiplexed after all (a TTY container): from there on everything is
/// passed through as stdout, header bytes included, rather than lost.
#[derive(Debug)]
pub struct Frames {
    raw: bool,
    header: [u8; 8],
    have: usize,
    remaining: u32,
    source: Source,
    start: bool,
}

impl Frames {
    /// `tty`: the stream is raw bytes (a TTY container), all stdout.
    pub fn new(tty: bool) -> Self {
        Frames { raw: tty, header: [0; 8], have: 0, remaining: 0, source: Source::Stdout, start: false }
    }

    /// Calls `out(source, payload, at)` for each piece of payload in `data`.
    pub fn push(&mut self, mut data: &[u8], out: &mut dyn FnMut(Source, &[u8], At)) {
        while !data.is_empty() {
            if self.raw {
                out(Source::Stdout, data, At::Raw);
                return;
            }
            if self.remaining == 0 {
                let n = (8 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have < 8 {
                    return;
                }
                self.have = 0;
                let h = self.header;
                self.source = match h[0] {
                    0 | 1 => Source::Stdout,
                    // 3 is the engine's own error message about the stream.
                    2 | 3 => Source::Stderr,
                    _ => {
                        self.switch_to_raw(data, out);
                        return;
                    }
                };
                if h[1..4] != [0, 0, 0] {
                    self.switch_to_raw(data, out);
                    return;
                }
                self.remaining = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                self.start = true;
                continue;
            }
            let n = data.len().min(self.remaining as usize);
            let at = if self.start { At::FrameStart } else { At::InFrame };
            out(self.source, &data[..n], at);
            self.start = false;
            self.remaining -= n as u32;
            data = &data[n..];
        }
    }

    fn switch_to_raw(&mut self, rest: &[u8], out: &mut dyn FnMut(Source, &[u8], At)) {
        log::debug!("stream is not multiplexed; reading it as raw bytes");
        self.raw = true;
        out(Source::Stdout, &self.header, At::Raw);
        if !rest.is_empty() {
            out(Source::Stdout, rest, At::Raw);
        }
    }
}

/// The line being assembled for one of stdout/stderr. Bytes are kept raw and
/// decoded per line, so a UTF-8 sequence split across frames or reads is
/// whole again by the time it is decoded.
#[derive(Debug, Default)]
struct Partial {
    /// Never empty while a line is open (the last frame did not end it).
    buf: Vec<u8>,
    ts: Option<String>,
}

/// Turns a log stream (multiplexed or TTY) into lines, one per '\n'.
///
/// Frames that do not end in '\n' (the engine splits lines over 16 KiB) are
/// joined into one line. With timestamps, each frame starts with
/// `<RFC3339Nano> `: the first frame's goes into `Line::ts`, those of
/// continuation frames are dropped. In TTY mode there are no frames, so a
/// timestamp is expected at the start of each line instead.
#[derive(Debug)]
pub struct Demux {
    frames: Frames,
    timestamps: bool,
    /// Timestamp bytes read so far, while reading one.
    ts: Option<Vec<u8>>,
    out: Partial,
    err: Partial,
}

impl Demux {
    pub fn new(tty: bool, timestamps: bool) -> Self {
        Demux {
            frames: Frames::new(tty),
            timestamps,
            // Frames each start their own timestamp; this first one is for
            // a raw stream (TTY, or one that turns out not to be framed).
            ts: timestamps.then(Vec::new),
            out: Partial::default(),
            err: Partial::default(),
        }
    }

    pub fn push(&mut self, data: &[u8], out: &mut dyn FnMut(Line)) {
        let Demux { frames, timestamps, ts, out: o, err: e } = self;
        frames.push(data, &mut |source, payload, at| {
            if at == At::FrameStart && *timestamps {
                *ts = Some(Vec::new());
            }
            let line = match source {
                Source::Stdout => &mut *o,
                Source::Stderr => &mut *e,
            };
            text(source, payload, *timestamps && at == At::Raw, ts, line, out);
        });
    }

    /// Emits what is left of unterminated lines, at the end of the stream.
    pub fn finish(&mut self, out: &mut dyn FnMut(Line)) {
        // Bytes still held as a possible timestamp were text after all.
        if let Some(pending) = self.ts.take().filter(|p| !p.is_empty()) {
            self.out.buf.extend_from_slice(&pending);
        }
        for (source, line) in [(Source::Stdout, &mut self.out), (Source::Stderr, &mut self.err)] {
            if !line.buf.is_empty() {
                emit(source, line, out);
                line.ts = None;
            }
        }
    }
}

/// Feeds payload text into `line`, reading a pending timestamp first and, if
/// `ts_per_line`, another one after each '\n'.
fn text(
    source: Source,
    mut data: &[u8],
    ts_per_line: bool,
    ts: &mut Option<Vec<u8>>,
    line: &mut Partial,
    out: &mut dyn FnMut(Line),
) {
    while !data.is_empty() {
        if let Some(acc) = ts {
            // A timestamp ends at the first space; a newline first means
            // there was none, and the bytes are text.
            match data.iter().position(|&b| b == b' ' || b == b'\n') {
                Some(i) if data[i] == b' ' && acc.len() + i <= MAX_TS => {
                    acc.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    let stamp = String::from_utf8_lossy(acc).into_owned();
                    *ts = None;
                    if line.buf.is_empty() {
                        line.ts = Some(stamp);
                    }
                }
                None if acc.len() + data.len() <= MAX_TS => {
                    acc.extend_from_slice(data);
                    return;
                }
                _ => {
                    let not_ts = std::mem::take(acc);
                    *ts = None;
                    append(source, &not_ts, line, out);
                }
            }
            continue;
        }
        match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                append(source, &data[..i], line, out);
                if line.buf.last() == Some(&b'\r') {
                    line.buf.pop();
                }
                emit(source, line, out);
                line.ts = None;
                data = &data[i + 1..];
                if ts_per_line {
                    *ts = Some(Vec::new());
                }
            }
            None => {
                append(source, data, line, out);
                return;
            }
        }
    }
}

/// Appends text to the line, emitting a piece whenever it would exceed
/// `MAX_LINE`; the rest (never empty) continues the line.
fn append(source: Source, mut data: &[u8], line: &mut Partial, out: &mut dyn FnMut(Line)) {
    while line.buf.len() + data.len() > MAX_LINE {
        let n = MAX_LINE - line.buf.len();
        line.buf.extend_from_slice(&data[..n]);
        data = &data[n..];
        let keep = incomplete_tail(&line.buf);
        let tail = line.buf.split_off(line.buf.len() - keep);
        emit(source, line, out);
        line.buf = tail;
    }
    line.buf.extend_from_slice(data);
}

fn emit(source: Source, line: &mut Partial, out: &mut dyn FnMut(Line)) {
    let text = String::from_utf8_lossy(&line.buf).into_owned();
    line.buf.clear();
    out(Line { source, ts: line.ts.clone(), text });
}

/// Length of a UTF-8 sequence cut short at the end of `b`, so a line split
/// for length does not split a character.
fn incomplete_tail(b: &[u8]) -> usize {
    for i in 1..=b.len().min(3) {
        let c = b[b.len() - i];
        if c & 0xC0 != 0x80 {
            let need = match c {
                0xF0.. => 4,
                0xE0.. => 3,
                0xC0.. => 2,
                _ => 1,
            };
            return if need > i { i } else { 0 };
        }
    }
    0
}

/// Splits newline-delimited JSON (pull progress, events) into values.
/// Lines that are not JSON are logged and skipped; a line over `MAX_LINE` is
/// dropped whole.
#[derive(Debug, Default)]
pub struct JsonLines {
    buf: Vec<u8>,
    overlong: bool,
}

impl JsonLines {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, mut data: &[u8], out: &mut dyn FnMut(Value)) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            self.take(&data[..i]);
            self.parse(out);
            data = &data[i + 1..];
        }
        self.take(data);
    }

    /// Parses an unterminated last line, at the end of the stream.
    pub fn finish(&mut self, out: &mut dyn FnMut(Value)) {
        self.parse(out);
    }

    fn take(&mut self, data: &[u8]) {
        if self.buf.len() + data.len() > MAX_LINE {
            self.overlong = true;
            self.buf.clear();
        } else if !self.overlong {
            self.buf.extend_from_slice(data);
        }
    }

    fn parse(&mut self, out: &mut dyn FnMut(Value)) {
        let overlong = std::mem::take(&mut self.overlong);
        let line = std::mem::take(&mut self.buf);
        if overlong {
            log::warn!("dropped a JSON line longer than {MAX_LINE} bytes");
            return;
        }
        if line.trim_ascii().is_empty() {
            return;
        }
        match serde_json::from_slice(&line) {
            Ok(v) => out(v),
            Err(e) => log::warn!(
                "skipped a line that is not JSON ({e}): {}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn lines(tty: bool, timestamps: bool, chunks: &[&[u8]]) -> Vec<Line> {
        let mut d = Demux::new(tty, timestamps);
        let mut v = Vec::new();
        for c in chunks {
            d.push(c, &mut |l| v.push(l));
        }
        d.finish(&mut |l| v.push(l));
        v
    }

    fn line(source: Source, ts: Option<&str>, text: &str) -> Line {
        Line { source, ts: ts.map(str::to_string), text: text.to_string() }
    }

    use Source::{Stderr, Stdout};

    fn sample() -> (Vec<u8>, Vec<Line>) {
        let mut buf = frame(1, b"hello \xc3");
        buf.extend(frame(2, b"err one\r\n"));
        buf.extend(frame(1, b"\xa9t\xc3\xa9\n"));
        buf.extend(frame(0, b""));
        buf.extend(frame(2, "日本\n語".as_bytes()));
        buf.extend(frame(1, b"tail"));
        let want = vec![
            line(Stderr, None, "err one"),
            line(Stdout, None, "hello été"),
            line(Stderr, None, "日本"),
            line(Stdout, None, "tail"),
            line(Stderr, None, "語"),
        ];
        (buf, want)
    }

    #[test]
    fn frames_cut_at_every_offset() {
        let (buf, want) = sample();
        assert_eq!(lines(false, false, &[&buf]), want);
        for cut in 0..=buf.len() {
            let got = lines(false, false, &[&buf[..cut], &buf[cut..]]);
            assert_eq!(got, want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = buf.chunks(1).collect();
        assert_eq!(lines(false, false, &bytes), want);
    }

    #[test]
    fn timestamped_frames_cut_at_every_offset() {
        let mut buf = frame(1, b"2024-01-02T03:04:05.000000001Z one\n");
        buf.extend(frame(2, b"2024-01-02T03:04:05.000000002Z two\n"));
        buf.extend(frame(1, b"2024-01-02T03:04:05.000000003Z par"));
        buf.extend(frame(1, b"2024-01-02T03:04:05.000000004Z t\n"));
        buf.extend(frame(1, b"2024-01-02T03:04:05.000000005Z \n"));
        let want = vec![
            line(Stdout, Some("2024-01-02T03:04:05.000000001Z"), "one"),
            line(Stderr, Some("2024-01-02T03:04:05.000000002Z"), "two"),
            line(Stdout, Some("2024-01-02T03:04:05.000000003Z"), "part"),
            line(Stdout, Some("2024-01-02T03:04:05.000000005Z"), ""),
        ];
        for cut in 0..=buf.len() {
            let got = lines(false, true, &[&buf[..cut], &buf[cut..]]);
            assert_eq!(got, want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = buf.chunks(1).collect();
        assert_eq!(lines(false, true, &bytes), want);
    }

    #[test]
    fn utf8_split_across_frames_and_invalid_bytes() {
        let euro = "€".as_bytes();
        let mut buf = frame(1, &euro[..1]);
        buf.extend(frame(2, b"x\n"));
        buf.extend(frame(1, &euro[1..2]));
        buf.extend(frame(1, &euro[2..]));
        buf.extend(frame(1, b"\xff\xfe ok\n\xe2\x82"));
        let want =
            vec![line(Stderr, None, "x"), line(Stdout, None, "€\u{fffd}\u{fffd} ok"), line(Stdout, None, "\u{fffd}")];
        assert_eq!(lines(false, false, &[&buf]), want);
    }

    fn long_line(n: usize) -> Vec<u8> {
        (0..n).map(|i| b'a' + (i % 26) as u8).collect()
    }

    #[test]
    fn long_line_in_16k_frames_is_one_line() {
        let text = long_line(64 * 1024);
        let mut buf = Vec::new();
        for (i, piece) in text.chunks(16 * 1024).enumerate() {
            let last = i == 3;
            let mut p = piece.to_vec();
            if last {
                p.push(b'\n');
            }
            buf.extend(frame(1, &p));
        }
        buf.extend(frame(2, b"after\n"));
        let got = lines(false, false, &[&buf]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].text.as_bytes(), &text[..]);
        assert_eq!(got[1], line(Stderr, None, "after"));
    }

    #[test]
    fn long_line_in_16k_frames_with_timestamps() {
        let text = long_line(64 * 1024);
        let mut buf = Vec::new();
        for (i, piece) in text.chunks(16 * 1024).enumerate() {
            let mut p = format!("2024-01-02T03:04:05.00000000{i}Z ").into_bytes();
            p.extend_from_slice(piece);
            if i == 3 {
                p.push(b'\n');
            }
            buf.extend(frame(1, &p));
        }
        for chunking in [buf.len(), 4096, 7, 1] {
            let chunks: Vec<&[u8]> = buf.chunks(chunking).collect();
            let got = lines(false, true, &chunks);
            assert_eq!(got.len(), 1, "chunks of {chunking}");
            assert_eq!(got[0].ts.as_deref(), Some("2024-01-02T03:04:05.000000000Z"));
            assert!(got[0].text.as_bytes() == &text[..], "chunks of {chunking}");
        }
    }

    #[test]
    fn line_over_cap_is_emitted_in_pieces_on_char_boundaries() {
        let mut text = vec![b'a'; MAX_LINE - 1];
        text.extend_from_slice("é".as_bytes());
        text.extend_from_slice(b"rest\n");
        let got = lines(false, false, &[&frame(1, &text)]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].text.len(), MAX_LINE - 1);
        assert_eq!(got[1].text, "érest");
    }

    #[test]
    fn tty_is_raw_stdout() {
        let data = b"one\r\ntw\xc3\xa9\n\x02\x00\x00\x00three";
        let want = vec![line(Stdout, None, "one"), line(Stdout, None, "twé"), line(Stdout, None, "\u{2}\0\0\0three")];
        for cut in 0..=data.len() {
            assert_eq!(lines(true, false, &[&data[..cut], &data[cut..]]), want);
        }
    }

    #[test]
    fn tty_with_timestamps_strips_each_lines_stamp() {
        let data = b"2024-01-02T03:04:05Z one\r\n2024-01-02T03:04:06Z two two\n";
        let want = vec![
            line(Stdout, Some("2024-01-02T03:04:05Z"), "one"),
            line(Stdout, Some("2024-01-02T03:04:06Z"), "two two"),
        ];
        for cut in 0..=data.len() {
            assert_eq!(lines(true, true, &[&data[..cut], &data[cut..]]), want);
        }
    }

    #[test]
    fn unframed_stream_falls_back_to_raw() {
        let got = lines(false, false, &[b"plain text\nmore\n"]);
        assert_eq!(got, vec![line(Stdout, None, "plain text"), line(Stdout, None, "more")]);
        let got = lines(false, true, &[b"2024-01-02T03:04:05Z a b\n2024-01-02T03:04:06Z c\n"]);
        assert_eq!(
            got,
            vec![line(Stdout, Some("2024-01-02T03:04:05Z"), "a b"), line(Stdout, Some("2024-01-02T03:04:06Z"), "c"),]
        );
        let mut buf = frame(2, b"framed\n");
        buf.extend_from_slice(b"not a header\n");
        let got = lines(false, false, &[&buf]);
        assert_eq!(got, vec![line(Stderr, None, "framed"), line(Stdout, None, "not a header")]);
    }

    #[test]
    fn hostile_length_streams_without_allocating() {
        let mut f = Frames::new(false);
        let mut seen = 0;
        let mut raw = false;
        let mut count = |_: Source, d: &[u8], at: At| {
            seen += d.len();
            raw |= at == At::Raw;
        };
        f.push(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], &mut count);
        f.push(&[b'x'; 1000], &mut count);
        assert_eq!(seen, 1000);
        assert!(!raw);
    }

    #[test]
    fn frames_report_frame_starts() {
        let mut buf = frame(1, b"abc");
        buf.extend(frame(2, b"de"));
        let mut f = Frames::new(false);
        let mut got = Vec::new();
        for c in buf.chunks(2) {
            f.push(c, &mut |s, d, start| got.push((s, d.to_vec(), start)));
        }
        assert_eq!(
            got,
            vec![
                (Stdout, b"ab".to_vec(), At::FrameStart),
                (Stdout, b"c".to_vec(), At::InFrame),
                (Stderr, b"d".to_vec(), At::FrameStart),
                (Stderr, b"e".to_vec(), At::InFrame),
            ]
        );
    }

    #[test]
    fn json_lines_across_chunks() {
        let data = b"{\"status\":\"a\"}\r\n\n{\"status\":\n\"b\"}\nnot json\n{\"x\":[1,2]}";
        for cut in 0..=data.len() {
            let mut j = JsonLines::new();
            let mut got = Vec::new();
            j.push(&data[..cut], &mut |v| got.push(v));
            j.push(&data[cut..], &mut |v| got.push(v));
            j.finish(&mut |v| got.push(v));
            assert_eq!(
                got,
                vec![serde_json::json!({"status": "a"}), serde_json::json!({"x": [1, 2]}),],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn json_lines_drop_overlong_line() {
        let mut j = JsonLines::new();
        let mut got = Vec::new();
        let big = vec![b'1'; MAX_LINE / 2 + 1];
        j.push(&big, &mut |v| got.push(v));
        j.push(&big, &mut |v| got.push(v));
        j.push(b"\n{\"ok\":true}\n", &mut |v| got.push(v));
        assert_eq!(got, vec![serde_json::json!({"ok": true})]);
    }
}
