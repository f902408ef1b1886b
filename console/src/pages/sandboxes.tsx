// The team's sandboxes, live from the events stream, with create and the lifecycle actions.
import { useEffect, useRef, useState } from "preact/hooks";
import { call, describe, fmtTime, type Sandbox, type Template } from "../api";
import { useEvents } from "../events";
import { navigate } from "../router";

/** Pause, resume, snapshot and destroy of one sandbox; calls `done` after each. */
export function SandboxActions(props: {
  sb: Sandbox;
  done: (destroyed?: boolean) => void;
  onError: (m: string) => void;
}) {
  const { sb } = props;
  const [busy, setBusy] = useState("");
  const run = async (label: string, f: () => Promise<unknown>, destroyed = false) => {
    setBusy(label);
    props.onError("");
    try {
      await f();
      props.done(destroyed);
    } catch (e) {
      props.onError(describe(e));
    } finally {
      setBusy("");
    }
  };
  const id = encodeURIComponent(sb.id);
  // A snapshot saves the sandbox as a template and then destroys it (the API's contract).
  const snapshot = async () => {
    const name = prompt(
      `Save ${sb.id} as a template, then destroy the sandbox. Template name (letters, digits, - and _):`,
      `${sb.id}-snap`,
    );
    if (!name) return;
    setBusy("Snapshotting…");
    props.onError("");
    try {
      await call("POST", "/v1/snapshots", { sandbox_id: sb.id, name });
      navigate("/templates");
    } catch (e) {
      props.onError(describe(e));
      setBusy("");
    }
  };
  const destroy = () => {
    if (!confirm(`Destroy sandbox ${sb.id}? Its files are lost.`)) return;
    run("Destroying…", () => call("DELETE", `/v1/sandboxes/${id}`), true);
  };
  if (busy) return <span class="muted">{busy}</span>;
  return (
    <span class="actions">
      {sb.status === "running" && (
        <button onClick={() => run("Pausing…", () => call("POST", `/v1/sandboxes/${id}/pause`))}>
          Pause
        </button>
      )}
      {sb.status === "paused" && (
        <button onClick={() => run("Resuming…", () => call("POST", `/v1/sandboxes/${id}/resume`))}>
          Resume
        </button>
      )}
      {(sb.status === "running" || sb.status === "paused") && (
        <button onClick={snapshot}>Snapshot</button>
      )}
      <button class="danger" onClick={destroy}>
        Destroy
      </button>
    </span>
  );
}

export function CreateSandbox(props: { template?: string; onCreated?: (sb: Sandbox) => void }) {
  const [templates, setTemplates] = useState<Template[]>([]);
  const [template, setTemplate] = useState(props.template ?? "");
  const [vcpus, setVcpus] = useState("");
  const [memory, setMemory] = useState("");
  const [timeout, setTimeoutSec] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");

  useEffect(() => {
    call<Template[]>("GET", "/v1/snapshots")
      .then(setTemplates)
      .catch(() => setTemplates([]));
  }, []);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError("");
    const body: Record<string, unknown> = {};
    if (template) body.template = template;
    if (vcpus) body.vcpus = Number(vcpus);
    if (memory) body.memory_mb = Number(memory);
    if (timeout) body.timeout_sec = Number(timeout);
    try {
      const sb = await call<Sandbox>("POST", "/v1/sandboxes", body);
      if (props.onCreated) props.onCreated(sb);
      else navigate(`/sandboxes/${encodeURIComponent(sb.id)}`);
    } catch (err) {
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="card create" onSubmit={submit}>
      <label>
        Template
        <select name="template" value={template} onChange={(e) => setTemplate(e.currentTarget.value)}>
          <option value="">default</option>
          {templates.map((t) => (
            <option key={t.name} value={t.name}>
              {t.name}
              {t.type === "snapshot" ? " (snapshot)" : ""}
            </option>
          ))}
        </select>
      </label>
      <label>
        vCPUs
        <input name="vcpus" type="number" min={1} max={64} placeholder="default" value={vcpus}
          onInput={(e) => setVcpus(e.currentTarget.value)} />
      </label>
      <label>
        Memory (MB)
        <input name="memory_mb" type="number" min={128} step={128} placeholder="default" value={memory}
          onInput={(e) => setMemory(e.currentTarget.value)} />
      </label>
      <label>
        Idle timeout (s)
        <input name="timeout_sec" type="number" min={0} placeholder="default" value={timeout}
          onInput={(e) => setTimeoutSec(e.currentTarget.value)} />
      </label>
      <button type="submit" class="primary" disabled={busy}>
        {busy ? "Creating…" : "Create sandbox"}
      </button>
      {error && <p class="error">{error}</p>}
    </form>
  );
}

export function SandboxesPage() {
  const [list, setList] = useState<Sandbox[] | null>(null);
  const [error, setError] = useState("");
  const [showCreate, setShowCreate] = useState(false);
  const timer = useRef<number | undefined>(undefined);

  const load = () =>
    call<Sandbox[]>("GET", "/v1/sandboxes")
      .then((l) => {
        setList(l);
      })
      .catch((e) => setError(describe(e)));
  useEffect(() => {
    load();
  }, []);
  // Every lifecycle event of the team reloads the list (at most every 300 ms).
  useEvents(() => {
    clearTimeout(timer.current);
    timer.current = window.setTimeout(load, 300);
  });

  return (
    <section>
      <div class="row spread">
        <h1>Sandboxes</h1>
        <button class="primary" onClick={() => setShowCreate(!showCreate)}>
          {showCreate ? "Close" : "New sandbox"}
        </button>
      </div>
      {showCreate && <CreateSandbox />}
      {error && <p class="error">{error}</p>}
      {list === null ? (
        <p class="muted">Loading…</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th>ID</th>
              <th>Status</th>
              <th class="wide">Template</th>
              <th class="wide">Size</th>
              <th class="wide">Created</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {list.map((sb) => (
              <tr key={sb.id} data-sandbox={sb.id}>
                <td>
                  <a href={`/sandboxes/${encodeURIComponent(sb.id)}`}
                    onClick={(e) => {
                      e.preventDefault();
                      navigate(`/sandboxes/${encodeURIComponent(sb.id)}`);
                    }}>
                    <code>{sb.id}</code>
                  </a>
                </td>
                <td>
                  <span class={`status ${sb.status}`}>{sb.status}</span>
                </td>
                <td class="wide">{sb.template}</td>
                <td class="wide">
                  {sb.vcpus} vCPU, {sb.memory_mb} MB
                </td>
                <td class="wide">{fmtTime(sb.created_at)}</td>
                <td>
                  <SandboxActions sb={sb} done={load} onError={setError} />
                </td>
              </tr>
            ))}
            {list.length === 0 && (
              <tr>
                <td colSpan={6} class="muted">
                  No sandboxes. Create one with “New sandbox”.
                </td>
              </tr>
            )}
          </tbody>
        </table>
      )}
    </section>
  );
}
