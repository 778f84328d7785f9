"""The Streamlit dashboard (`wb dashboard RUN ...`): `app.py` is the entrypoint, `views/` one file per page,
`generic.py` the page of an analysis without a file of its own, `state.py` the selection and the cached data they
share. Figures come from `workbench.figures`."""
