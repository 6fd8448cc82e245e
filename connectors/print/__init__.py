"""Remote print: post for recipients who are not on digital post becomes a paper letter.

The router sends a message to ``dp2.print`` when its recipient is exempt from
digital post, unknown, or not in the contact register; its documents are then
encrypted for the print provider (provider id ``print``). The print connector
(connectors.print.connector) opens it with that provider's key, finds the postal
address in the contact register, renders one print-ready PDF (connectors.print.render:
a cover letter for a window envelope, then every page of every document), hands it
to the print provider — a folder drop, or an HTTP upload — and emits PRINTED. An
address that cannot be printed is FAILED with a reason that says how to fix it.

A letter is never held whole in memory, so a 99.5 MB document is printed with the
process under 200 MB (issue 15; tests/integration/test_print.py measures it):

- the delivery handler decrypts a blob-stored document a chunk at a time into the
  connector's private spool (connectors.print.spool), as the reference mailbox does
  into its own folder, instead of into memory;
- the renderer reads it from there by path, and copies its pages into the letter an
  object at a time (connectors.print.pdfjoin; pypdf's own writer holds every page it
  is given until it writes), writing the letter to a spool file that is on disk
  before its job row commits (connectors.print.store keeps its name and SHA-256, not
  the PDF);
- the hand-over (connectors.print.handover) streams that file into the drop folder
  or the upload, after checking its SHA-256.

The decrypted documents are deleted once the letter is rendered or refused, the
rendered PDF once the provider has it, and at start whatever a crash left behind.
The provider still gets one PDF, not a bundle of parts to assemble: joining object
by object costs no more memory than handing the parts over would, and the print
provider's side stays as it was.
"""
