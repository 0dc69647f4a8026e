"""The command line: thin commands over the engine, the sources, the store and the ops tools."""
