// The calls console: sign-in, then the pages the URL's fragment names.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { answered, api, whenSessionRefused } from "./api";
import { Layout } from "./components";
import { BatchPage, Batches } from "./pages/Batches";
import { CallPage } from "./pages/Call";
import { Calls } from "./pages/Calls";
import { Agents, PhoneNumbers } from "./pages/Directory";
import { Keys } from "./pages/Keys";
import { NewBatch } from "./pages/NewBatch";
import { SignIn } from "./pages/SignIn";
import { TestCall } from "./pages/TestCall";
import { WebhookPage, Webhooks } from "./pages/Webhooks";
import { type Route, useRoute } from "./router";
import { forgetCredentials, savedCredentials } from "./session";
import "./style.css";

/** The page a route names, for a signed-in organization. */
function Page({ route, organizationId }: { route: Route; organizationId: string | null }) {
  const [section, id] = route.parts;
  switch (section) {
    case "calls":
      return id ? <CallPage key={id} callId={id} /> : <Calls query={route.query} />;
    case "test-call":
      return <TestCall />;
    case "agents":
      return <Agents query={route.query} />;
    case "phone-numbers":
      return <PhoneNumbers query={route.query} />;
    case "webhooks":
      return id ? <WebhookPage key={id} webhookId={id} query={route.query} /> : <Webhooks />;
    case "batches":
      if (id === "new") return <NewBatch />;
      return id ? <BatchPage key={id} batchId={id} query={route.query} /> : <Batches query={route.query} />;
    case "keys":
      return organizationId ? <Keys organizationId={organizationId} /> : null;
    default:
      return (
        <section>
          <h1>Page not found</h1>
          <p>
            There is no page <code>{route.parts.join("/")}</code> in the console.
          </p>
        </section>
      );
  }
}

function App() {
  const route = useRoute();
  const [signedIn, setSignedIn] = useState(() => savedCredentials() !== null);
  const [organizationId, setOrganizationId] = useState<string | null>(null);
  const [reason, setReason] = useState<string | null>(null);

  useEffect(() => {
    whenSessionRefused((why) => {
      setSignedIn(false);
      setOrganizationId(null);
      setReason(`You were signed out: the API no longer accepts this key (${why}).`);
    });
  }, []);

  // A reloaded tab is still signed in: which organization, from one call of the API.
  useEffect(() => {
    if (signedIn && !organizationId) {
      answered(api.GET("/calls", { params: { query: { limit: 1 } } }))
        .then((page) => setOrganizationId(page.data.organization_id))
        .catch(() => {});
    }
  }, [signedIn, organizationId]);

  if (!signedIn) {
    return (
      <SignIn
        reason={reason}
        onSignedIn={(organization) => {
          setReason(null);
          setOrganizationId(organization);
          setSignedIn(true);
        }}
      />
    );
  }
  const signOut = () => {
    forgetCredentials();
    setSignedIn(false);
    setOrganizationId(null);
    setReason("You signed out.");
  };
  return (
    <Layout current={route.parts[0]} organizationId={organizationId} admin={Boolean(savedCredentials()?.adminToken)} onSignOut={signOut}>
      <Page route={route} organizationId={organizationId} />
    </Layout>
  );
}

render(<App />, document.getElementById("app")!);
