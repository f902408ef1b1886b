// The team's lifecycle events (the SSE stream, authenticated by the session cookie): calls
// back on every event, reconnecting after a drop.
import { useEffect } from "preact/hooks";

export function useEvents(onEvent: (name: string, data: unknown) => void) {
  useEffect(() => {
    const es = new EventSource("/v1/events/stream", { withCredentials: true });
    const names = [
      "capsule.create",
      "capsule.pause",
      "capsule.resume",
      "capsule.destroy",
      "capsule.state.changed",
      "template.snapshot.create",
      "template.snapshot.delete",
    ];
    const handler = (e: MessageEvent) => {
      let data: unknown = null;
      try {
        data = JSON.parse(e.data);
      } catch {
        /* keep null */
      }
      onEvent(e.type, data);
    };
    names.forEach((n) => es.addEventListener(n, handler as EventListener));
    return () => es.close();
  }, []);
}
