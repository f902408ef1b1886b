// API keys: create (the key is shown once, with a copy button), list and delete.
import { useEffect, useState } from "preact/hooks";
import { call, describe, fmtTime, type ApiKey } from "../api";

export function KeysPage() {
  const [keys, setKeys] = useState<ApiKey[]>([]);
  const [name, setName] = useState("");
  const [created, setCreated] = useState<ApiKey | null>(null);
  const [copied, setCopied] = useState(false);
  const [error, setError] = useState("");

  const load = () =>
    call<ApiKey[]>("GET", "/v1/api-keys")
      .then(setKeys)
      .catch((e) => setError(describe(e)));
  useEffect(() => {
    load();
  }, []);

  const create = async (e: Event) => {
    e.preventDefault();
    setError("");
    try {
      const k = await call<ApiKey>("POST", "/v1/api-keys", name ? { name } : {});
      setCreated(k);
      setCopied(false);
      setName("");
      load();
    } catch (err) {
      setError(describe(err));
    }
  };

  const remove = async (k: ApiKey) => {
    if (!confirm(`Delete the API key "${k.name}"? Programs using it stop working.`)) return;
    try {
      await call("DELETE", `/v1/api-keys/${encodeURIComponent(k.id)}`);
      load();
    } catch (err) {
      setError(describe(err));
    }
  };

  const copy = async () => {
    if (!created?.key) return;
    try {
      await navigator.clipboard.writeText(created.key);
      setCopied(true);
    } catch {
      setError("The browser refused the clipboard: select the key and copy it by hand.");
    }
  };

  return (
    <section>
      <h1>API keys</h1>
      <form class="row" onSubmit={create}>
        <input
          name="key-name"
          placeholder="Key name"
          maxLength={128}
          value={name}
          onInput={(e) => setName(e.currentTarget.value)}
        />
        <button type="submit" class="primary">
          Create key
        </button>
      </form>
      {error && <p class="error">{error}</p>}
      {created?.key && (
        <div class="card notice" data-testid="new-key">
          <p>
            Your new key <strong>{created.name}</strong>. Copy it now: it is shown only once.
          </p>
          <div class="row">
            <code class="secret">{created.key}</code>
            <button onClick={copy}>{copied ? "Copied" : "Copy"}</button>
            <button class="link" onClick={() => setCreated(null)}>
              Done
            </button>
          </div>
        </div>
      )}
      <table>
        <thead>
          <tr>
            <th>Name</th>
            <th>Key</th>
            <th class="wide">Created</th>
            <th class="wide">Last used</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {keys.map((k) => (
            <tr key={k.id}>
              <td>{k.name}</td>
              <td>
                <code>{k.key_prefix}</code>
              </td>
              <td class="wide">{fmtTime(k.created_at)}</td>
              <td class="wide">{fmtTime(k.last_used)}</td>
              <td class="actions">
                <button class="danger" onClick={() => remove(k)}>
                  Delete
                </button>
              </td>
            </tr>
          ))}
          {keys.length === 0 && (
            <tr>
              <td colSpan={5} class="muted">
                No keys yet.
              </td>
            </tr>
          )}
        </tbody>
      </table>
    </section>
  );
}
