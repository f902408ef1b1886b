// Templates (the base images and the team's snapshots): start a sandbox from one, delete a
// snapshot.
import { useEffect, useState } from "preact/hooks";
import { call, describe, fmtBytes, fmtTime, type Sandbox, type Template } from "../api";
import { useEvents } from "../events";
import { navigate } from "../router";

export function TemplatesPage() {
  const [list, setList] = useState<Template[] | null>(null);
  const [error, setError] = useState("");
  const [busy, setBusy] = useState("");
  const load = () =>
    call<Template[]>("GET", "/v1/snapshots")
      .then(setList)
      .catch((e) => setError(describe(e)));
  useEffect(() => {
    load();
  }, []);
  useEvents((name) => name.startsWith("template.") && load());

  const start = async (t: Template) => {
    setBusy(t.name);
    setError("");
    try {
      const sb = await call<Sandbox>("POST", "/v1/sandboxes", { template: t.name });
      navigate(`/sandboxes/${encodeURIComponent(sb.id)}`);
    } catch (e) {
      setError(describe(e));
    } finally {
      setBusy("");
    }
  };
  const remove = async (t: Template) => {
    if (!confirm(`Delete the template ${t.name}?`)) return;
    try {
      await call("DELETE", `/v1/snapshots/${encodeURIComponent(t.name)}`);
      load();
    } catch (e) {
      setError(describe(e));
    }
  };

  return (
    <section>
      <h1>Templates</h1>
      {error && <p class="error">{error}</p>}
      {list === null ? (
        <p class="muted">Loading…</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Name</th>
              <th>Kind</th>
              <th class="wide">Size</th>
              <th class="wide">Created</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {list.map((t) => (
              <tr key={t.name} data-template={t.name}>
                <td>
                  <code>{t.name}</code>
                </td>
                <td>{t.type}</td>
                <td class="wide">{t.size_bytes ? fmtBytes(t.size_bytes) : ""}</td>
                <td class="wide">{fmtTime(t.created_at)}</td>
                <td class="actions">
                  {busy === t.name ? (
                    <span class="muted">Starting…</span>
                  ) : (
                    <button onClick={() => start(t)}>Start sandbox</button>
                  )}
                  {t.type === "snapshot" && (
                    <button class="danger" onClick={() => remove(t)}>
                      Delete
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
