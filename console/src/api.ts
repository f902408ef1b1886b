// The console's HTTP client: same-origin requests authenticated by the HttpOnly session
// cookie, with the CSRF token sent on every state-changing request, and API errors turned
// into sentences.

export interface Session {
  user_id: string;
  team_id: string;
  email: string;
  csrf_token: string;
  expires_at: string;
}

export interface Sandbox {
  id: string;
  status: string;
  template: string;
  vcpus: number;
  memory_mb: number;
  timeout_sec: number;
  created_at?: string;
  last_active_at?: string;
}

export interface Template {
  name: string;
  type: "base" | "snapshot";
  vcpus?: number;
  memory_mb?: number;
  size_bytes?: number;
  created_at?: string;
}

export interface ApiKey {
  id: string;
  name: string;
  key_prefix: string;
  created_at: string;
  last_used?: string | null;
  key?: string;
}

export interface FileEntry {
  name: string;
  path: string;
  type: "file" | "directory" | "symlink";
  size: number;
  modified_at?: string | number;
}

let csrf = "";

export function setCsrf(token: string) {
  csrf = token;
}

/** An API error, its message in words. */
export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

async function errorOf(res: Response): Promise<ApiError> {
  let code = "http_" + res.status;
  let message = `The server answered ${res.status} ${res.statusText}.`;
  try {
    const body = await res.json();
    const e = body?.error ?? body;
    if (typeof e?.code === "string") code = e.code;
    const m = e?.message ?? body?.message ?? body?.detail;
    if (typeof m === "string" && m) message = m.charAt(0).toUpperCase() + m.slice(1);
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(res.status, code, message);
}

/** The message of any thrown value, for the page. */
export function describe(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  if (e instanceof TypeError) return "Cannot reach the Wrenn server: " + e.message;
  return String((e as Error)?.message ?? e);
}

function headers(method: string, json: boolean): Record<string, string> {
  const h: Record<string, string> = {};
  if (json) h["content-type"] = "application/json";
  if (method !== "GET" && method !== "HEAD" && csrf) h["x-csrf-token"] = csrf;
  return h;
}

/** A request whose answer is JSON (or nothing, for 204). */
export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: headers(method, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw await errorOf(res);
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

/** A request whose answer is bytes (a file download). */
export async function blob(path: string, body: unknown): Promise<Blob> {
  const res = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: headers("POST", true),
    body: JSON.stringify(body),
  });
  if (!res.ok) throw await errorOf(res);
  return res.blob();
}

/** A multipart upload with progress (0..1) reports. */
export function upload(
  path: string,
  form: FormData,
  progress: (fraction: number) => void,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.withCredentials = true;
    if (csrf) xhr.setRequestHeader("x-csrf-token", csrf);
    xhr.upload.onprogress = (e) => e.lengthComputable && progress(e.loaded / e.total);
    xhr.onerror = () => reject(new Error("The upload was interrupted (network error)."));
    xhr.onload = async () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve();
      reject(await errorOf(new Response(xhr.responseText, { status: xhr.status })));
    };
    xhr.send(form);
  });
}

/** Signs in with a session token (from signup, login or the GitHub callback). */
export async function startSession(token: string): Promise<Session> {
  const s = await call<Session>("POST", "/v1/auth/session", { token });
  setCsrf(s.csrf_token);
  return s;
}

export async function currentSession(): Promise<Session | null> {
  try {
    const s = await call<Session>("GET", "/v1/auth/session");
    setCsrf(s.csrf_token);
    return s;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    throw e;
  }
}

export const fmtBytes = (n: number) => {
  if (!Number.isFinite(n)) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n < 10 && i > 0 ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
};

/** A time of the API: an RFC 3339 string, or Unix seconds (file listings). */
export const fmtTime = (s?: string | number | null) =>
  s === undefined || s === null || s === ""
    ? "—"
    : new Date(typeof s === "number" ? s * 1000 : s).toLocaleString();
