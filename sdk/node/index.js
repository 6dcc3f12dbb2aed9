'use strict';
// sidetrace: emit LLM application traces to the local sidetrace agent.
module.exports = require('./lib/client');
