// Sign up / sign in (password, and GitHub when the server has it configured), and the
// GitHub callback page that moves the token into the session cookie.
import { useEffect, useState } from "preact/hooks";
import { call, describe, startSession, type Session } from "../api";
import { navigate } from "../router";

interface AuthResponse {
  token: string;
}

const OAUTH_ERRORS: Record<string, string> = {
  access_denied: "GitHub sign-in was cancelled.",
  signup_closed: "Signup is closed on this server: ask an administrator for an account.",
  invalid_state: "The sign-in took too long or came from another browser; try again.",
  missing_code: "GitHub did not send a sign-in code back; try again.",
  exchange_failed: "Wrenn could not confirm the sign-in with GitHub; try again.",
  email_taken: "An account with this email exists already: sign in with its password.",
  internal_error: "The server failed to complete the sign-in; try again.",
};

export function AuthPage(props: { mode: "login" | "signup"; onSignedIn: (s: Session) => void }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const [github, setGithub] = useState(false);
  const signup = props.mode === "signup";

  useEffect(() => {
    call<{ providers: string[] }>("GET", "/v1/auth/providers")
      .then((p) => setGithub(p.providers.includes("github")))
      .catch(() => setGithub(false));
  }, []);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError("");
    try {
      const auth = await call<AuthResponse>("POST", signup ? "/v1/auth/signup" : "/v1/auth/login", {
        email,
        password,
      });
      props.onSignedIn(await startSession(auth.token));
    } catch (err) {
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  };

  const other = signup ? "/login" : "/signup";
  return (
    <div class="auth">
      <h1>Wrenn</h1>
      <form class="card" onSubmit={submit}>
        <h2>{signup ? "Create an account" : "Sign in"}</h2>
        <label>
          Email
          <input
            name="email"
            type="email"
            autocomplete="email"
            required
            value={email}
            onInput={(e) => setEmail(e.currentTarget.value)}
          />
        </label>
        <label>
          Password
          <input
            name="password"
            type="password"
            autocomplete={signup ? "new-password" : "current-password"}
            required
            minLength={signup ? 8 : undefined}
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {error && <p class="error">{error}</p>}
        <button type="submit" class="primary" disabled={busy}>
          {signup ? "Sign up" : "Sign in"}
        </button>
        {github && (
          <a class="button github" href="/v1/auth/oauth/github">
            Sign in with GitHub
          </a>
        )}
        <p class="muted">
          {signup ? "Have an account? " : "New here? "}
          <a
            href={other}
            onClick={(e) => {
              e.preventDefault();
              setError("");
              navigate(other);
            }}
          >
            {signup ? "Sign in" : "Create an account"}
          </a>
        </p>
      </form>
    </div>
  );
}

export function GithubCallback(props: { onSignedIn: (s: Session) => void }) {
  const [error, setError] = useState("");
  useEffect(() => {
    const q = new URLSearchParams(location.search);
    const token = q.get("token");
    const err = q.get("error");
    // The token leaves the address bar (and the history) before anything else happens.
    history.replaceState(null, "", "/auth/github/callback");
    if (err || !token) {
      setError(OAUTH_ERRORS[err ?? ""] ?? `GitHub sign-in failed (${err ?? "no token"}).`);
      return;
    }
    startSession(token)
      .then(props.onSignedIn)
      .catch((e) => setError(describe(e)));
  }, []);
  return (
    <div class="auth">
      <h1>Wrenn</h1>
      <div class="card">
        {error ? (
          <>
            <p class="error">{error}</p>
            <a href="/login">Back to sign in</a>
          </>
        ) : (
          <p class="muted">Signing in with GitHub…</p>
        )}
      </div>
    </div>
  );
}
