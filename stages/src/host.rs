//! What the host machine offers the stages, read from the operating system: the memory this
//! process may still use (the data readers' limits and training's memory check both need it).

/// Memory this process may still use: `MemAvailable` of `/proc/meminfo`, lowered to the
/// cgroup's `memory.max` headroom where one is set (containers, Slurm). `None` where neither
/// can be read (not Linux).
pub(crate) fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)?;
    let cgroup = || -> Option<u64> {
        let max: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let current: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(max.saturating_sub(current))
    };
    Some(cgroup().map_or(available, |c| c.min(available)))
}
