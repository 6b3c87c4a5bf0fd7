"""The cost explorer's pages (not named ``pages/``: Streamlit 1.67 would also serve that folder as
old-style pages beside ``st.navigation``, with the file names in the menu and URLs that bypass ``app.py``)."""
