import { lazy, Suspense, useCallback, useEffect, useState } from "react";
import { auth, onConnectivity, onUnauthorized, OfflineError, setCsrfToken } from "./api";
import { match, navigate, onLinkClick, usePath } from "./lib/router";
import { SessionsPage } from "./pages/Sessions";
import { SignIn } from "./pages/SignIn";

const SessionPage = lazy(() => import("./pages/Session"));
const UsagePage = lazy(() => import("./pages/Usage"));
const ConnectorsPage = lazy(() => import("./pages/Connectors"));

type AuthState =
  | { state: "checking" }
  | { state: "signed_out"; notice?: string }
  | { state: "signed_in"; user: string };

export function App() {
  const [authState, setAuth] = useState<AuthState>({ state: "checking" });
  const [offline, setOffline] = useState(false);
  const [recovered, setRecovered] = useState(false);

  const check = useCallback(async () => {
    try {
      const me = await auth.current();
      setCsrfToken(me.csrf_token);
      setAuth({ state: "signed_in", user: me.user });
    } catch (err) {
      if (err instanceof OfflineError) {
        setTimeout(check, 2000);
        return;
      }
      setAuth({ state: "signed_out" });
    }
  }, []);

  useEffect(() => {
    check();
  }, [check]);

  useEffect(
    () =>
      onUnauthorized(() =>
        setAuth({
          state: "signed_out",
          notice:
            "Your sign-in has ended (you signed out elsewhere, it expired, or the key was " +
            "revoked). Sign in again to continue.",
        }),
      ),
    [],
  );

  useEffect(() => {
    let wasOffline = false;
    let timer: number | undefined;
    return onConnectivity((online) => {
      if (!online && !wasOffline) {
        wasOffline = true;
        setOffline(true);
      } else if (online && wasOffline) {
        wasOffline = false;
        setOffline(false);
        setRecovered(true);
        clearTimeout(timer);
        timer = window.setTimeout(() => setRecovered(false), 4000);
      }
    });
  }, []);

  if (authState.state === "checking") {
    return <div className="splash" aria-busy="true">Loading Sophon…</div>;
  }
  if (authState.state === "signed_out") {
    return (
      <SignIn
        notice={authState.notice}
        onSignedIn={(user, csrf) => {
          setCsrfToken(csrf);
          setAuth({ state: "signed_in", user });
        }}
      />
    );
  }
  const signOut = async () => {
    try {
      await auth.signOut();
    } finally {
      setCsrfToken("");
      setAuth({ state: "signed_out", notice: "You are signed out." });
      navigate("/", true);
    }
  };
  return (
    <Shell user={authState.user} onSignOut={signOut} offline={offline} recovered={recovered} />
  );
}

function Shell(props: {
  user: string;
  onSignOut: () => void;
  offline: boolean;
  recovered: boolean;
}) {
  const path = usePath();
  const route = match(path);
  const session = route.page === "session";
  return (
    <div className={`shell ${session ? "shell-session" : ""}`}>
      <header className="topbar">
        <a href="/" className="brand" onClick={onLinkClick}>
          Sophon
        </a>
        <nav aria-label="Main">
          <a
            href="/"
            onClick={onLinkClick}
            aria-current={route.page === "sessions" || session ? "page" : undefined}
          >
            Sessions
          </a>
          <a href="/usage" onClick={onLinkClick} aria-current={route.page === "usage" ? "page" : undefined}>
            Usage
          </a>
          <a
            href="/connectors"
            onClick={onLinkClick}
            aria-current={route.page === "connectors" ? "page" : undefined}
          >
            Connectors
          </a>
        </nav>
        <span className="spacer" />
        <span className="who" title="Signed in">
          {props.user}
        </span>
        <button className="ghost" onClick={props.onSignOut}>
          Sign out
        </button>
      </header>
      {props.offline && (
        <div className="banner warn" role="status">
          Cannot reach the Sophon server (it may be restarting). Retrying…
        </div>
      )}
      {props.recovered && !props.offline && (
        <div className="banner ok" role="status">
          Connection to the server is back.
        </div>
      )}
      <main className="main">
        <Suspense fallback={<div className="splash">Loading…</div>}>
          {route.page === "sessions" && <SessionsPage />}
          {route.page === "session" && <SessionPage key={route.id} id={route.id} />}
          {route.page === "usage" && <UsagePage />}
          {route.page === "connectors" && <ConnectorsPage />}
          {route.page === "not_found" && (
            <div className="empty">
              <h1>Page not found</h1>
              <p>
                <a href="/" onClick={onLinkClick}>
                  Back to the sessions
                </a>
              </p>
            </div>
          )}
        </Suspense>
      </main>
    </div>
  );
}
