"""Machine bookings: opening hours, rules, check-in, no-shows, maintenance and calendars."""
