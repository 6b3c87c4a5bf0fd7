"""The runmeter cost explorer: routes to the pages and renders the shared sidebar (``runmeter dashboard``)."""

import streamlit as st

from dashboards import data

st.set_page_config(page_title="runmeter", layout="wide")
page = st.navigation([
    st.Page("pages/overview.py", title="Overview", url_path="overview", default=True),
    st.Page("pages/storage.py", title="Storage", url_path="storage"),
    st.Page("pages/whatif.py", title="Retrieval what-if", url_path="whatif"),
    st.Page("pages/threads.py", title="Threads", url_path="threads"),
    st.Page("pages/runs.py", title="Runs", url_path="runs"),
    st.Page("pages/reconciliation.py", title="Reconciliation", url_path="reconciliation"),
])
data.sidebar()
page.run()
