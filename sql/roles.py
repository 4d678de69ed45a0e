"""The three database roles migrations create, and what each may do.

They are NOLOGIN group roles: operators create login users IN ROLE one of them, so no password
ever lives in a migration. The migrator owns every object; the app role has only the table
privileges the flows need (no DDL); the reporting role reads.
"""

MIGRATOR = "stave_migrator"
APP = "stave_app"
REPORTING = "stave_reporting"
ALL_ROLES = (MIGRATOR, APP, REPORTING)

APP_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
