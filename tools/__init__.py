"""The MCP face: the tools and the MCP server over stdio and Streamable HTTP."""
