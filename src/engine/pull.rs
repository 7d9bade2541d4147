//! A pull's progress, summed over its layers from the engine's JSON progress
//! stream (`POST /images/create`): one object a line, `{status, id,
//! progressDetail: {current, total}}`, where `id` is a short layer id.

use std::collections::BTreeMap;

use serde_json::Value;

/// How far a pull got: bytes downloaded of the total known so far (a layer's
/// size is known once it starts downloading), and layers complete of those seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub layers_done: u64,
    pub layers_total: u64,
    /// The latest status the engine sent, e.g. `Downloading`.
    pub status: String,
}

#[derive(Default)]
struct Layer {
    current: u64,
    total: u64,
    /// Its bytes are all here (downloaded, or extracting).
    downloaded: bool,
    /// Extracted, or already on the host.
    done: bool,
}

/// The layers of one pull, fed line by line.
#[derive(Default)]
pub struct Layers {
    layers: BTreeMap<String, Layer>,
    status: String,
}

impl Layers {
    /// Take one line of the stream; false when it says nothing about progress.
    pub fn take(&mut self, line: &Value) -> bool {
        let Some(status) = line["status"].as_str() else { return false };
        self.status = status.to_string();
        // "Pulling from <repo>" carries the tag as its id; "Digest: …" and
        // "Status: …" carry none. Neither is a layer.
        let Some(id) = line["id"].as_str().filter(|_| !status.starts_with("Pulling from")) else { return true };
        let layer = self.layers.entry(id.to_string()).or_default();
        let detail = &line["progressDetail"];
        match status {
            "Downloading" => {
                layer.current = detail["current"].as_u64().unwrap_or(layer.current);
                layer.total = detail["total"].as_u64().filter(|t| *t > 0).unwrap_or(layer.total);
            }
            "Verifying Checksum" | "Download complete" | "Extracting" => layer.downloaded = true,
            "Pull complete" | "Already exists" => {
                layer.downloaded = true;
                layer.done = true;
            }
            // "Pulling fs layer", "Waiting", "Retrying in …": nothing moved.
            _ => {}
        }
        true
    }

    pub fn progress(&self) -> PullProgress {
        let mut p = PullProgress { status: self.status.clone(), ..PullProgress::default() };
        for l in self.layers.values() {
            p.bytes_total += l.total;
            p.bytes_done += if l.downloaded { l.total } else { l.current.min(l.total) };
            p.layers_done += u64::from(l.done);
        }
        p.layers_total = self.layers.len() as u64;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bytes_and_layers_add_up_over_the_stream() {
        let mut l = Layers::default();
        let lines = [
            json!({"status": "Pulling from dcd-test/slow", "id": "12m"}),
            json!({"status": "Already exists", "progressDetail": {}, "id": "aaa"}),
            json!({"status": "Pulling fs layer", "progressDetail": {}, "id": "bbb"}),
            json!({"status": "Pulling fs layer", "progressDetail": {}, "id": "ccc"}),
            json!({"status": "Waiting", "progressDetail": {}, "id": "ccc"}),
            json!({"status": "Downloading", "progressDetail": {"current": 100, "total": 1000}, "id": "bbb"}),
        ];
        for line in &lines {
            assert!(l.take(line));
        }
        let p = l.progress();
        assert_eq!((p.bytes_done, p.bytes_total, p.layers_done, p.layers_total), (100, 1000, 1, 3));
        assert_eq!(p.status, "Downloading");
        l.take(&json!({"status": "Downloading", "progressDetail": {"current": 50, "total": 400}, "id": "ccc"}));
        l.take(&json!({"status": "Download complete", "progressDetail": {}, "id": "bbb"}));
        let p = l.progress();
        assert_eq!((p.bytes_done, p.bytes_total), (1050, 1400));
        // Extracting counts bytes unpacked, not downloaded: the download sum stays.
        l.take(&json!({"status": "Extracting", "progressDetail": {"current": 7, "total": 9000}, "id": "bbb"}));
        l.take(&json!({"status": "Pull complete", "progressDetail": {}, "id": "bbb"}));
        l.take(&json!({"status": "Download complete", "id": "ccc"}));
        l.take(&json!({"status": "Pull complete", "id": "ccc"}));
        assert!(l.take(&json!({"status": "Digest: sha256:00"})));
        assert!(!l.take(&json!({"errorDetail": {"message": "x"}})));
        let p = l.progress();
        assert_eq!((p.bytes_done, p.bytes_total, p.layers_done, p.layers_total), (1400, 1400, 3, 3));
    }
}
