//! The choice of host for a sandbox made from a snapshot template, which lives only on the
//! hosts that hold it (the one that made it and those a copy reached): the same [`choose`]
//! among healthy, non-draining hosts, with "has the template" meaning "holds it". A holder
//! with room wins; when none can take the create (unreachable, draining or full) another
//! host is chosen and the caller copies the template there first (`app/template_copy.rs`).

use super::{candidate, choose, Candidate, Health, Hosts, LiveHost, NoPlacement};

impl Hosts {
    /// The host for a sandbox of `memory_mb` MiB from a snapshot template held by
    /// `holders`, and whether it already holds the template; counted against that host until
    /// its next report, as [`Hosts::place_base`] does.
    pub async fn place_snapshot(
        &self,
        holders: &[String],
        memory_mb: i64,
    ) -> Result<(LiveHost, bool), NoPlacement> {
        self.ensure_beaten().await;
        let healthy = self.healthy();
        if healthy.is_empty() {
            return Err(NoPlacement::NoLiveHost);
        }
        let candidates: Vec<Candidate> = healthy
            .iter()
            .filter(|h| !h.1)
            .map(|(id, _, info, _, placed_mb, placed)| {
                candidate(id, info, *placed_mb, *placed, holders.contains(id))
            })
            .collect();
        let chosen = choose(&candidates, memory_mb).ok_or(NoPlacement::AllDraining)?;
        let (id, holds) = (chosen.id.clone(), chosen.has_template);
        self.note_placed(&id, memory_mb);
        let agent = self.any_agent(&id).map_err(|_| NoPlacement::NoLiveHost)?;
        Ok((LiveHost { id, agent }, holds))
    }

    /// The first of `holders` that answers its heartbeats (a draining host still serves as
    /// the source of a copy), with its client.
    pub fn reachable_holder(
        &self,
        holders: &[String],
    ) -> Option<(String, std::sync::Arc<dyn crate::agent::HostAgent>)> {
        holders
            .iter()
            .filter(|h| self.health(h) == Health::Healthy)
            .find_map(|h| self.any_agent(h).ok().map(|a| (h.clone(), a)))
    }
}
