// A sandbox's file browser over the capsule file API: list a directory, go into
// subdirectories, upload (with progress), download, make a directory and delete.
import { useEffect, useState } from "preact/hooks";
import { blob, call, describe, fmtBytes, fmtTime, upload, type FileEntry } from "../api";

const join = (dir: string, name: string) => (dir.endsWith("/") ? dir : dir + "/") + name;
const HOME = "/home/user";
const parent = (dir: string) => dir.replace(/\/[^/]+\/?$/, "") || "/";

export function FileBrowser(props: { id: string; running: boolean }) {
  const base = `/v1/capsules/${encodeURIComponent(props.id)}/files`;
  // The template user's home; "/" where a template has none.
  const [dir, setDir] = useState(HOME);
  const [typed, setTyped] = useState(HOME);
  const [entries, setEntries] = useState<FileEntry[] | null>(null);
  const [error, setError] = useState("");
  const [progress, setProgress] = useState<number | null>(null);
  const [newDir, setNewDir] = useState("");

  const load = (d = dir) => {
    setError("");
    call<{ entries: FileEntry[]; truncated?: boolean }>("POST", `${base}/list`, { path: d, depth: 1 })
      .then((r) => {
        setEntries(r.entries.filter((e) => e.path !== d));
        setDir(d);
        setTyped(d);
      })
      .catch((e) => (d === HOME && e?.status === 404 ? load("/") : setError(describe(e))));
  };
  useEffect(() => {
    if (props.running) load();
  }, [props.id, props.running]);

  if (!props.running) return <p class="muted">Files are available while the sandbox runs.</p>;

  const onUpload = async (e: Event) => {
    const input = e.currentTarget as HTMLInputElement;
    const file = input.files?.[0];
    if (!file) return;
    const form = new FormData();
    form.append("path", join(dir, file.name));
    form.append("file", file);
    setProgress(0);
    setError("");
    try {
      await upload(`${base}/write`, form, setProgress);
      load();
    } catch (err) {
      setError(describe(err));
    } finally {
      setProgress(null);
      input.value = "";
    }
  };

  const download = async (f: FileEntry) => {
    try {
      const b = await blob(`${base}/read`, { path: f.path });
      const url = URL.createObjectURL(b);
      const a = document.createElement("a");
      a.href = url;
      a.download = f.name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) {
      setError(describe(err));
    }
  };

  const remove = async (f: FileEntry) => {
    if (!confirm(`Delete ${f.path}${f.type === "directory" ? " and everything in it" : ""}?`)) return;
    try {
      await call("POST", `${base}/remove`, { path: f.path });
      load();
    } catch (err) {
      setError(describe(err));
    }
  };

  const mkdir = async (e: Event) => {
    e.preventDefault();
    if (!newDir) return;
    try {
      await call("POST", `${base}/mkdir`, { path: join(dir, newDir) });
      setNewDir("");
      load();
    } catch (err) {
      setError(describe(err));
    }
  };

  return (
    <div class="files">
      <form class="row" onSubmit={(e) => { e.preventDefault(); load(typed || "/"); }}>
        <button type="button" onClick={() => load(parent(dir))} disabled={dir === "/"} title="Up">
          ↑
        </button>
        <input name="dir" value={typed} onInput={(e) => setTyped(e.currentTarget.value)} />
        <button type="submit">Open</button>
      </form>
      <div class="row">
        <label class="button">
          Upload…
          <input type="file" name="upload" class="hidden" onChange={onUpload} />
        </label>
        <form class="row" onSubmit={mkdir}>
          <input name="new-dir" placeholder="New folder" value={newDir} maxLength={255}
            onInput={(e) => setNewDir(e.currentTarget.value)} />
          <button type="submit">Make folder</button>
        </form>
      </div>
      {progress !== null && (
        <div class="progress" title="Upload progress">
          <div style={{ width: `${Math.round(progress * 100)}%` }} />
          <span>{Math.round(progress * 100)}%</span>
        </div>
      )}
      {error && <p class="error">{error}</p>}
      <table class="file-list">
        <tbody>
          {(entries ?? []).map((f) => (
            <tr key={f.path} data-file={f.name}>
              <td>
                {f.type === "directory" ? (
                  <a href="#" onClick={(e) => { e.preventDefault(); load(f.path); }}>
                    {f.name}/
                  </a>
                ) : (
                  <span>{f.name}</span>
                )}
              </td>
              <td class="num">{f.type === "file" ? fmtBytes(f.size) : ""}</td>
              <td class="wide">{fmtTime(f.modified_at)}</td>
              <td class="actions">
                {f.type === "file" && <button onClick={() => download(f)}>Download</button>}
                <button class="danger" onClick={() => remove(f)}>Delete</button>
              </td>
            </tr>
          ))}
          {entries && entries.length === 0 && (
            <tr><td class="muted" colSpan={4}>Empty directory.</td></tr>
          )}
        </tbody>
      </table>
    </div>
  );
}
