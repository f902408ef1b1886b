// The team's usage: what it holds now and its daily vCPU and memory minutes.
import { useEffect, useState } from "preact/hooks";
import { call, describe } from "../api";

interface Stats {
  current: { running_count: number; vcpus_reserved: number; memory_mb_reserved: number };
  peaks: { running_count: number; vcpus: number; memory_mb: number };
}
interface Usage {
  from: string;
  to: string;
  points: { date: string; cpu_minutes: number; ram_mb_minutes: number }[];
}

export function UsagePage() {
  const [stats, setStats] = useState<Stats | null>(null);
  const [usage, setUsage] = useState<Usage | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    call<Stats>("GET", "/v1/capsules/stats?range=24h").then(setStats).catch((e) => setError(describe(e)));
    call<Usage>("GET", "/v1/capsules/usage").then(setUsage).catch((e) => setError(describe(e)));
  }, []);
  const max = Math.max(1e-9, ...(usage?.points ?? []).map((p) => p.cpu_minutes));
  return (
    <section>
      <h1>Usage</h1>
      {error && <p class="error">{error}</p>}
      {stats && (
        <div class="tiles">
          <div class="tile"><span>Running now</span><strong>{stats.current.running_count}</strong></div>
          <div class="tile"><span>vCPUs now</span><strong>{stats.current.vcpus_reserved}</strong></div>
          <div class="tile"><span>Memory now</span><strong>{stats.current.memory_mb_reserved} MB</strong></div>
          <div class="tile"><span>Most at once (30 days)</span><strong>{stats.peaks.running_count}</strong></div>
        </div>
      )}
      {usage && (
        <>
          <h2>Daily usage, {usage.from} to {usage.to}</h2>
          <table>
            <thead>
              <tr><th>Day</th><th>vCPU minutes</th><th class="wide">Memory (MB·min)</th><th class="wide" /></tr>
            </thead>
            <tbody>
              {usage.points.filter((p) => p.cpu_minutes > 0 || p.ram_mb_minutes > 0).reverse().map((p) => (
                <tr key={p.date}>
                  <td>{p.date}</td>
                  <td class="num">{p.cpu_minutes.toFixed(1)}</td>
                  <td class="num wide">{Math.round(p.ram_mb_minutes)}</td>
                  <td class="wide"><div class="hbar" style={{ width: `${(p.cpu_minutes / max) * 100}%` }} /></td>
                </tr>
              ))}
              {usage.points.every((p) => p.cpu_minutes === 0 && p.ram_mb_minutes === 0) && (
                <tr><td colSpan={4} class="muted">No usage in this period.</td></tr>
              )}
            </tbody>
          </table>
        </>
      )}
    </section>
  );
}
