"""The Streamlit dashboard (`wb dashboard RUN ...`): `app.py` is the entrypoint, `views/` one file per page,
`state.py` the selection and the cached data they share. Figures come from `workbench.figures`."""
