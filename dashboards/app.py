"""The runmeter cost explorer's entry script: it only routes (``runmeter dashboard`` runs it).

Each page renders the shared sidebar itself (through :func:`dashboards.data.require_store`), so the
assumptions are part of every page's run.
"""

import streamlit as st

st.set_page_config(page_title="runmeter", layout="wide")
page = st.navigation([
    st.Page("views/overview.py", title="Overview", url_path="overview", default=True),
    st.Page("views/storage.py", title="Storage", url_path="storage"),
    st.Page("views/whatif.py", title="Retrieval what-if", url_path="whatif"),
    st.Page("views/threads.py", title="Threads", url_path="threads"),
    st.Page("views/runs.py", title="Runs", url_path="runs"),
    st.Page("views/reconciliation.py", title="Reconciliation", url_path="reconciliation"),
])
page.run()
