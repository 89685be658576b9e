// Preloaded (NODE_OPTIONS=--require .../amqplib_port_redirect.js) into amqplib 2.2.0's own tests.
//
// Those tests honour env URL only in channel_api.test.js; callback_api.test.js and
// connect.test.js connect to 'amqp://localhost' (and '[::1]') on the default port 5672.
// So that the suite can run against a broker on any port, this redirects every
// net.connect() to port 5672 to the port in env AMQP_DEFAULT_PORT_REDIRECT (host unchanged).
// Connections to other ports (e.g. the tests' deliberately closed ports) are untouched.
'use strict';
const net = require('node:net');
const target = Number(process.env.AMQP_DEFAULT_PORT_REDIRECT || 0);
if (target && target !== 5672) {
  const orig = net.connect;
  const redirect = function (opts, ...rest) {
    if (opts && typeof opts === 'object' && Number(opts.port) === 5672) {
      opts = { ...opts, port: target };
    } else if ((typeof opts === 'number' || typeof opts === 'string') && Number(opts) === 5672) {
      opts = target;
    }
    return orig.call(this, opts, ...rest);
  };
  net.connect = redirect;
  net.createConnection = redirect;
}
