// jsforce, a second real Salesforce client, against sfsync's Salesforce simulator.
// Input (environment): SF_INSTANCE_URL, SF_ACCESS_TOKEN, SF_API_VERSION, TASK_IDS (JSON list: 4 Task Ids, then a well-formed Id of no Task).
// The simulator's CA comes in through NODE_EXTRA_CA_CERTS. Prints one JSON object on stdout.
'use strict';
const jsforce = require('jsforce');

function errorOf(err) {
  return { name: err.name, errorCode: err.errorCode, message: String(err.message).slice(0, 300) };
}

async function main() {
  const ids = JSON.parse(process.env.TASK_IDS);
  const conn = new jsforce.Connection({
    instanceUrl: process.env.SF_INSTANCE_URL,
    accessToken: process.env.SF_ACCESS_TOKEN,
    version: process.env.SF_API_VERSION,
  });
  const out = {};

  // 1. SOQL query
  const quoted = ids.slice(0, 4).map((id) => `'${id}'`).join(',');
  const queried = await conn.query(`SELECT Id, Subject, SMS_Status__c FROM Task WHERE Id IN (${quoted}) ORDER BY Id`);
  out.query = { totalSize: queried.totalSize, done: queried.done, ids: queried.records.map((r) => r.Id) };

  // 2. sObject Collections update (allOrNone false): two good rows, an Id of no Task, a malformed Id
  const updated = await conn.sobject('Task').update([
    { Id: ids[0], SMS_Status__c: 'Delivered', SMS_Status_Code__c: '220' },
    { Id: ids[1], SMS_Status__c: 'Failed', SMS_Status_Code__c: '414' },
    { Id: ids[4], SMS_Status__c: 'Delivered' },
    { Id: '00T000000000000AAA', SMS_Status__c: 'Delivered' },
  ], { allOrNone: false });
  out.collections = updated.map((r) => ({ id: r.id || null, success: r.success,
    errors: (r.errors || []).map((e) => e.statusCode || e.errorCode) }));

  // 3. Bulk API 2.0 ingest: one row refused by a validation rule, one good row
  const bulk = await conn.bulk2.loadAndWaitForResults({
    object: 'Task', operation: 'update', pollInterval: 100, pollTimeout: 20000,
    input: [
      { Id: ids[2], SMS_Status__c: 'Submitted', SMS_Status_Code__c: '210' },
      { Id: ids[3], SMS_Status__c: 'Rejected', SMS_Status_Code__c: '411' },
    ],
  });
  out.bulk = {
    successful: bulk.successfulResults.map((r) => ({ id: r.sf__Id, created: r.sf__Created })),
    failed: bulk.failedResults.map((r) => ({ id: r.sf__Id, error: r.sf__Error, echoedId: r.Id })),
    unprocessed: bulk.unprocessedRecords.length,
  };

  // 4. Error answers
  out.errors = {};
  for (const [name, soql] of [['invalid_field', 'SELECT Nope__c FROM Task'], ['malformed', 'SELECT FROM Task WHERE']]) {
    try {
      await conn.query(soql);
      out.errors[name] = null;
    } catch (err) {
      out.errors[name] = errorOf(err);
    }
  }
  try {
    const [answer] = await conn.sobject('Task').update([{ Id: ids[0], Nope__c: 'x' }], { allOrNone: false });
    out.errors.update_invalid_field = { success: answer.success, errorCode: (answer.errors[0] || {}).statusCode };
  } catch (err) {
    out.errors.update_invalid_field = errorOf(err);
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  process.stderr.write(`jsforce client failed: ${err.stack || err}\n`);
  process.exit(1);
});
