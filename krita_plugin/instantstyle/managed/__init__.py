"""The backend the plugin installs, starts and stops itself ("Managed on this computer").

Qt-free, like the rest of the plugin's core: ``platforms`` decides where things go and which
Python runs the backend on Linux, Windows and macOS; ``server_process`` starts the server as a child
process on loopback with a fresh token, follows its console, restarts it once if it dies and stops
it, leaving no orphan (the server exits when its stdin, held by Krita, closes).
"""
