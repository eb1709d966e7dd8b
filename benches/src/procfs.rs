//! A server's CPU time and resident memory, read from `/proc` for a process and all its
//! descendants (nginx's workers, pushpin's helpers).

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    time::Duration,
};

/// Clock ticks per second of `/proc/PID/stat` (Linux reports `USER_HZ`, 100 on every platform
/// Herald runs on).
const TICKS_PER_S: f64 = 100.0;

/// A group of process trees.
#[derive(Debug, Clone, Default)]
pub struct Procs {
    roots: Vec<u32>,
}

/// One reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU time of every live process in the trees.
    pub cpu: Duration,
    /// Summed resident set size, bytes.
    pub rss: u64,
}

impl Procs {
    /// The trees rooted at `roots`.
    pub fn new(roots: impl IntoIterator<Item = u32>) -> Self {
        Self {
            roots: roots.into_iter().collect(),
        }
    }

    /// Every live pid in the trees.
    pub fn pids(&self) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse().ok()) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
        let mut out = Vec::new();
        let mut todo = self.roots.clone();
        while let Some(pid) = todo.pop() {
            if out.contains(&pid) {
                continue;
            }
            out.push(pid);
            todo.extend(children.get(&pid).into_iter().flatten());
        }
        out
    }

    /// CPU and RSS now.
    pub fn sample(&self) -> Sample {
        let mut s = Sample::default();
        for pid in self.pids() {
            let one = sample_pid(pid);
            s.cpu += one.cpu;
            s.rss += one.rss;
        }
        s
    }

    /// Waits until the trees use at most 5 % of a core over 200 ms (a store's background work
    /// after a burst of writes: compaction, checkpoints), or `at_most`; how long it waited. A
    /// measurement started then is not shared with work left over from setting it up.
    pub async fn quiet(&self, at_most: Duration) -> Duration {
        const SPAN: Duration = Duration::from_millis(200);
        let start = std::time::Instant::now();
        let mut before = self.sample().cpu;
        while start.elapsed() < at_most {
            tokio::time::sleep(SPAN).await;
            let now = self.sample().cpu;
            if now.saturating_sub(before) <= SPAN / 20 {
                break;
            }
            before = now;
        }
        start.elapsed()
    }

    /// CPU and RSS now, summed by process name (`/proc/PID/comm`): which of a deployment's
    /// processes spends the time and holds the memory.
    pub fn sample_by_name(&self) -> BTreeMap<String, Sample> {
        let mut out: BTreeMap<String, Sample> = BTreeMap::new();
        for pid in self.pids() {
            let Some(name) = fs::read_to_string(format!("/proc/{pid}/comm")).ok() else {
                continue;
            };
            let one = sample_pid(pid);
            let entry = out.entry(name.trim().to_owned()).or_default();
            entry.cpu += one.cpu;
            entry.rss += one.rss;
        }
        out
    }
}

/// Each live process's name and CPU time, by pid: a reading that [`Procs::cpu_by_name_since`]
/// counts from.
pub type CpuByPid = BTreeMap<u32, (String, Duration)>;

impl Procs {
    /// Each live process's name and CPU time now.
    pub fn cpu_by_pid(&self) -> CpuByPid {
        self.pids()
            .into_iter()
            .filter_map(|pid| {
                let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                Some((pid, (name.trim().to_owned(), sample_pid(pid).cpu)))
            })
            .collect()
    }

    /// CPU time spent since `before`, summed by process name, per process: one started since
    /// counts from zero, so a process that replaced another (nginx's workers after a reload)
    /// does not hide what the others spent, as a difference of sums would. A process gone since
    /// takes its time with it.
    pub fn cpu_by_name_since(&self, before: &CpuByPid) -> BTreeMap<String, Duration> {
        let mut out: BTreeMap<String, Duration> = BTreeMap::new();
        for (pid, (name, cpu)) in self.cpu_by_pid() {
            let start = before
                .get(&pid)
                .filter(|(was, _)| *was == name)
                .map_or(Duration::ZERO, |(_, cpu)| *cpu);
            *out.entry(name).or_default() += cpu.saturating_sub(start);
        }
        out
    }
}

/// One process's CPU and RSS now (nothing for a process that is gone).
fn sample_pid(pid: u32) -> Sample {
    let Some(f) = stat_fields(pid) else {
        return Sample::default();
    };
    // After the command: state(0) ppid(1) … utime(11) stime(12) … rss(21, pages).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    Sample {
        cpu: Duration::from_secs_f64(ticks as f64 / TICKS_PER_S),
        rss: rss_bytes(pid).unwrap_or(0),
    }
}

/// The fields of `/proc/PID/stat` after the `(command)`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Connections the kernel dropped at a full listen queue, machine-wide (this network namespace):
/// `ListenDrops` of `/proc/net/netstat`. A client whose handshake is dropped retries it only
/// after 1 s, then 3, 7, 15 s... from its first try.
pub fn listen_drops() -> Option<u64> {
    netstat("TcpExt:", "ListenDrops")
}

/// One counter of `/proc/net/netstat`, where each group is a line of names and a line of values.
fn netstat(group: &str, name: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with(group));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if let Some(i) = names.split_whitespace().position(|n| n == name) {
            return values.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

/// This process's own CPU time (not its children's: the suite's servers are its children).
pub fn own_cpu() -> Duration {
    let ticks: u64 = stat_fields(std::process::id())
        .map(|f| {
            [11, 12]
                .iter()
                .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / TICKS_PER_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listen_drops() {
        assert!(listen_drops().is_some());
    }

    #[test]
    fn reads_this_process() {
        let procs = Procs::new([std::process::id()]);
        let s = procs.sample();
        assert!(s.rss > 0);
        let by_name = procs.sample_by_name();
        assert_eq!(by_name.len(), 1, "{by_name:?}");
        assert!(by_name.values().all(|s| s.rss > 0));
    }

    #[test]
    fn counts_cpu_per_process_from_a_reading() {
        let procs = Procs::new([std::process::id()]);
        let before = procs.cpu_by_pid();
        assert_eq!(before.len(), 1, "{before:?}");
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            std::hint::black_box(start.elapsed());
        }
        let since = procs.cpu_by_name_since(&before);
        assert_eq!(since.len(), 1, "{since:?}");
        assert!(since.values().all(|cpu| *cpu > Duration::ZERO), "{since:?}");
        // From nothing, a process counts all of its time.
        let all = procs.cpu_by_name_since(&CpuByPid::new());
        assert!(
            all.values().sum::<Duration>() >= since.values().sum(),
            "{all:?}"
        );
    }
}
