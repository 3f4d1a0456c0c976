"""The runtime: machine supervisors, the fleet and the command channel, above the domains.

It is the only package that talks to drivers/.
"""
