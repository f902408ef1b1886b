// A live terminal in a sandbox: xterm.js over the PTY WebSocket (`/v1/capsules/{id}/pty`).
// Frames as the SDK's: JSON text for control (start, resize, pong; started, exit, error,
// ping), binary for keystrokes and output. Fits its box and follows the window's size.
import { useEffect, useRef, useState } from "preact/hooks";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";

export function TerminalView(props: { id: string; running: boolean }) {
  const box = useRef<HTMLDivElement>(null);
  const [state, setState] = useState("connecting");
  const [generation, setGeneration] = useState(0);

  useEffect(() => {
    if (!props.running || !box.current) return;
    const term = new Terminal({
      cursorBlink: true,
      fontSize: 14,
      fontFamily: "ui-monospace, Menlo, Consolas, monospace",
      theme: { background: "#111418" },
      scrollback: 2000,
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box.current);
    fit.fit();
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/v1/capsules/${encodeURIComponent(props.id)}/pty`);
    ws.binaryType = "arraybuffer";
    const send = (m: object) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(m));
    const enc = new TextEncoder();
    ws.onopen = () => {
      setState("starting");
      send({ type: "start", cmd: "/bin/bash", cols: term.cols, rows: term.rows });
    };
    ws.onmessage = (e) => {
      if (e.data instanceof ArrayBuffer) {
        term.write(new Uint8Array(e.data));
        return;
      }
      let m: { type?: string; exit_code?: number; data?: string; fatal?: boolean };
      try {
        m = JSON.parse(e.data);
      } catch {
        return;
      }
      if (m.type === "started") {
        setState("connected");
        // Take the keyboard only if nothing else has it: what a user is typing into another
        // field (a folder name, say) must not land in the shell.
        const active = document.activeElement;
        if (!active || active === document.body) term.focus();
      } else if (m.type === "ping") send({ type: "pong" });
      else if (m.type === "exit") {
        term.write(`\r\n\x1b[90m[process exited with code ${m.exit_code}]\x1b[0m\r\n`);
        setState("exited");
      } else if (m.type === "error") {
        term.write(`\r\n\x1b[31m${m.data ?? "error"}\x1b[0m\r\n`);
        if (m.fatal) setState("closed");
      }
    };
    ws.onclose = (e) => {
      setState((s) => (s === "exited" ? s : "closed"));
      if (e.code !== 1000 && e.reason) term.write(`\r\n\x1b[90m[${e.reason}]\x1b[0m\r\n`);
    };
    ws.onerror = () => term.write("\r\n\x1b[31m[the terminal connection failed]\x1b[0m\r\n");
    const input = term.onData((d) => ws.readyState === WebSocket.OPEN && ws.send(enc.encode(d)));
    const resized = term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
    const observer = new ResizeObserver(() => {
      try {
        fit.fit();
      } catch {
        /* not laid out */
      }
    });
    observer.observe(box.current);
    return () => {
      observer.disconnect();
      input.dispose();
      resized.dispose();
      ws.close(1000);
      term.dispose();
    };
  }, [props.id, props.running, generation]);

  if (!props.running) {
    return <div class="terminal-off muted">The terminal is available while the sandbox runs.</div>;
  }
  return (
    <div>
      <div class="row spread small">
        <span class="muted" data-testid="terminal-state">
          Terminal: {state}
        </span>
        {(state === "closed" || state === "exited") && (
          <button onClick={() => setGeneration(generation + 1)}>Reconnect</button>
        )}
      </div>
      <div class="term-box" ref={box} />
    </div>
  );
}
