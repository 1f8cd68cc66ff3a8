// A tiny History API router: the server answers every client route with index.html.
import { useSyncExternalStore } from "react";

const listeners = new Set<() => void>();

function subscribe(fn: () => void): () => void {
  listeners.add(fn);
  window.addEventListener("popstate", fn);
  return () => {
    listeners.delete(fn);
    window.removeEventListener("popstate", fn);
  };
}

export function navigate(to: string, replace = false): void {
  if (to === location.pathname + location.search) return;
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  for (const fn of listeners) fn();
  window.scrollTo(0, 0);
}

export function usePath(): string {
  return useSyncExternalStore(subscribe, () => location.pathname);
}

export type Route =
  | { page: "sessions" }
  | { page: "session"; id: string }
  | { page: "usage" }
  | { page: "connectors" }
  | { page: "not_found" };

export function match(path: string): Route {
  if (path === "/" || path === "/sessions" || path === "/sessions/") return { page: "sessions" };
  const m = /^\/sessions\/([^/]+)\/?$/.exec(path);
  if (m) return { page: "session", id: decodeURIComponent(m[1]) };
  if (path === "/usage" || path === "/usage/") return { page: "usage" };
  if (path === "/connectors" || path === "/connectors/") return { page: "connectors" };
  return { page: "not_found" };
}

/** A link that navigates in the app (and still works as a normal link: middle click, copy). */
export function onLinkClick(e: React.MouseEvent<HTMLAnchorElement>): void {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) {
    return;
  }
  e.preventDefault();
  navigate(e.currentTarget.getAttribute("href")!);
}
