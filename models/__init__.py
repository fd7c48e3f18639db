"""The networks and their trainers; nothing here touches the database."""
