//! The choice of a host for a new sandbox, from numbers alone (no I/O, so it is tested
//! directly): among hosts that can take the request, the least loaded by capacity — the
//! memory left after what is committed (and what was placed since the host last reported),
//! then the vCPUs per running sandbox — preferring a host that already has the template.

/// What placement knows of one host that can take a sandbox (healthy, not draining).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// MiB of memory the host may still commit.
    pub room_mb: i64,
    /// The host's CPUs.
    pub cpus: u32,
    /// Sandboxes running there (including those placed since its last report).
    pub running: u32,
    /// Whether it already has the template.
    pub has_template: bool,
}

/// The host for a sandbox of `memory_mb` MiB, or `None` when there is no candidate.
/// Hosts with room come first (when none has room the one with the most is tried: its agent
/// refuses with a clear error); among them, those that have the template; then the most
/// room; then the most CPUs per running sandbox; then the id, so the choice is stable.
pub fn choose(candidates: &[Candidate], memory_mb: i64) -> Option<&Candidate> {
    candidates.iter().min_by(|a, b| {
        let fits = |c: &Candidate| c.room_mb >= memory_mb;
        // Compared as cpus_a / (running_a + 1) against cpus_b / (running_b + 1).
        let per_a = u64::from(a.cpus) * (u64::from(b.running) + 1);
        let per_b = u64::from(b.cpus) * (u64::from(a.running) + 1);
        fits(b)
            .cmp(&fits(a))
            .then(b.has_template.cmp(&a.has_template))
            .then(b.room_mb.cmp(&a.room_mb))
            .then(per_b.cmp(&per_a))
            .then(a.id.cmp(&b.id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, room_mb: i64, running: u32, has_template: bool) -> Candidate {
        Candidate {
            id: id.into(),
            room_mb,
            cpus: 4,
            running,
            has_template,
        }
    }

    #[test]
    fn the_most_room_wins_not_the_fewest_sandboxes() {
        // a runs one big sandbox, b two small ones: b has more room.
        let hosts = [host("a", 12_000, 1, true), host("b", 15_000, 2, true)];
        assert_eq!(choose(&hosts, 512).unwrap().id, "b");
    }

    #[test]
    fn a_host_with_room_beats_one_without() {
        let hosts = [host("a", 256, 0, true), host("b", 1024, 9, true)];
        assert_eq!(choose(&hosts, 512).unwrap().id, "b");
        // None has room: the one with the most is tried.
        assert_eq!(choose(&hosts, 4096).unwrap().id, "b");
    }

    #[test]
    fn the_template_is_preferred_among_hosts_with_room() {
        let hosts = [host("a", 15_000, 0, false), host("b", 2048, 3, true)];
        assert_eq!(choose(&hosts, 512).unwrap().id, "b");
        // ... but not over room: without room on b, a takes it.
        assert_eq!(choose(&hosts, 4096).unwrap().id, "a");
    }

    #[test]
    fn equal_room_goes_to_more_cpus_per_sandbox_then_by_id() {
        let mut big = host("b", 4096, 1, true);
        big.cpus = 16;
        let hosts = [host("a", 4096, 1, true), big];
        assert_eq!(choose(&hosts, 512).unwrap().id, "b");
        let hosts = [host("b", 4096, 1, true), host("a", 4096, 1, true)];
        assert_eq!(choose(&hosts, 512).unwrap().id, "a");
        assert!(choose(&[], 512).is_none());
    }
}
