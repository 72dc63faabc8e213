"""The daemon's actors, one per module, and what they share: supervision (`base`) and work
done off their mailboxes (`workers`)."""
