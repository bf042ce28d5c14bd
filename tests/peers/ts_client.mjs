// The official TypeScript SDK's client (v2, @modelcontextprotocol/client),
// in its default mode, against a URL.
//
// Usage: node ts_client.mjs URL
// Connects (version negotiation as the SDK does it by default), lists the
// tools and calls `echo`. Prints one JSON line with what it saw; exits 1
// with the error otherwise.
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const url = process.argv[2];
const client = new Client({ name: 'mcp-gateway-ts-check', version: '1.0.0' });
try {
    await client.connect(new StreamableHTTPClientTransport(new URL(url)));
    const tools = await client.listTools();
    const result = await client.callTool({ name: 'echo', arguments: { text: 'hello from typescript' } });
    const echo = (result.content ?? []).filter(c => c.type === 'text').map(c => c.text);
    console.log(
        JSON.stringify({
            tools: tools.tools.map(t => t.name).sort(),
            echo,
            is_error: Boolean(result.isError),
            protocol_version: client.transport?.protocolVersion ?? null
        })
    );
    await client.close();
} catch (e) {
    console.error(`typescript client failed: ${e?.stack ?? e}`);
    process.exit(1);
}
