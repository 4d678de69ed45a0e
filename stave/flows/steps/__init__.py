"""Prefect @task wrappers a flow runs, where they would crowd the flow's own module.

Each is a few lines over a plain function in stave.tasks (which imports no Prefect): what the
wrapper adds is a name in the UI, retries for transient trouble, and the `gpu` slot.
"""
