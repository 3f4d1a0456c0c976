"""Accounts: users, roles, passwords and API tokens."""
