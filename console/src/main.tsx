// The console's shell: the session, a tiny history-API router and the navigation bar.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { call, currentSession, describe, setCsrf, type Session } from "./api";
import { AuthPage, GithubCallback } from "./pages/auth";
import { KeysPage } from "./pages/keys";
import { SandboxesPage } from "./pages/sandboxes";
import { SandboxPage } from "./pages/sandbox";
import { TemplatesPage } from "./pages/templates";
import { UsagePage } from "./pages/usage";
import { navigate, usePath } from "./router";
import "@xterm/xterm/css/xterm.css";
import "./style.css";

function App() {
  const path = usePath();
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [error, setError] = useState("");

  useEffect(() => {
    if (path === "/auth/github/callback") return;
    currentSession()
      .then(setSession)
      .catch((e) => setError(describe(e)));
  }, []);

  const signedIn = (s: Session) => {
    setSession(s);
    // The callback page leaves no entry in the history.
    navigate("/", location.pathname === "/auth/github/callback");
  };

  if (path === "/auth/github/callback") return <GithubCallback onSignedIn={signedIn} />;
  if (error) return <p class="error page">{error}</p>;
  if (session === undefined) return <p class="page muted">Loading…</p>;
  if (session === null) {
    return <AuthPage mode={path === "/signup" ? "signup" : "login"} onSignedIn={signedIn} />;
  }

  const signOut = async () => {
    try {
      await call("DELETE", "/v1/auth/session");
    } finally {
      setCsrf("");
      setSession(null);
      navigate("/login");
    }
  };

  let page;
  const m = path.match(/^\/sandboxes\/([^/]+)$/);
  if (m) page = <SandboxPage id={decodeURIComponent(m[1])} />;
  else if (path === "/keys") page = <KeysPage />;
  else if (path === "/templates") page = <TemplatesPage />;
  else if (path === "/usage") page = <UsagePage />;
  else page = <SandboxesPage />;

  const link = (to: string, label: string) => (
    <a
      href={to}
      class={path === to || (to === "/" && path.startsWith("/sandboxes")) ? "active" : ""}
      onClick={(e) => {
        e.preventDefault();
        navigate(to);
      }}
    >
      {label}
    </a>
  );

  return (
    <>
      <header class="bar">
        <strong class="brand">Wrenn</strong>
        <nav>
          {link("/", "Sandboxes")}
          {link("/templates", "Templates")}
          {link("/keys", "API keys")}
          {link("/usage", "Usage")}
        </nav>
        <span class="who" title={session.team_id}>
          {session.email}
        </span>
        <button class="link" onClick={signOut}>
          Sign out
        </button>
      </header>
      <main class="page">{page}</main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
