//! `mutateRows` and `mutateRowsTs`, the calls that carry nearly every cell a writer sends,
//! decoded straight off the wire into one [`MutationBatch`]: rows, columns and values are
//! appended to one buffer, so a call of thousands of cells costs a handful of allocations
//! instead of the generated decoder's several per cell (`BatchMutation` and `Mutation`
//! structs, a `Vec` per row, column and value, then a `Vec` per family and qualifier).
//!
//! **Same answers as the generated processor.** Every read goes through [`GuardedInput`]
//! (lengths bounded before anything is allocated; left-out arguments supplied empty; an
//! oversize call refused with an `IOError` by the server), fields of an unexpected type are
//! skipped as the generated code skips unknown ones, and the checks and their messages are
//! the handler's, in the same order: a `BatchMutation` without a row, a `Mutation` without a
//! column, a put without a qualifier (`IllegalArgument`), an empty or too long row, then the
//! store's (unknown table or family, a disabled table, a negative timestamp). A call that
//! fails a check writes nothing. A read error is answered as the generated processor
//! answers it (an application exception) and the server closes the connection.

use std::ops::Range;

use hbase_thrift::hbase::{IOError, IllegalArgument};
use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier, TType,
};

use crate::handler::{check_row, now_ms};
use crate::protocol::GuardedInput;
use crate::store::{MutationBatch, OpKind, Store, StoreError, LATEST_TIMESTAMP};

/// Whether a call is decoded here rather than by the generated processor.
pub fn handles(method: &str) -> bool {
    method == "mutateRows" || method == "mutateRowsTs"
}

/// One `Mutation` as read: ranges of the batch's buffer.
#[derive(Debug, Clone)]
struct Read {
    is_delete: bool,
    column: Option<Range<usize>>,
    value: Range<usize>,
}

/// The arguments of a call as read.
struct Args {
    table: Range<usize>,
    ts: i64,
    batch: MutationBatch,
    /// The first argument check that failed; the rest of the call is read, not kept.
    refused: Option<StoreError>,
}

fn illegal(message: &str) -> StoreError {
    StoreError::IllegalArgument(message.into())
}

/// Reads one `Mutation` struct.
fn read_mutation(i: &mut GuardedInput, buf: &mut Vec<u8>) -> thrift::Result<Read> {
    let mut m = Read { is_delete: false, column: None, value: buf.len()..buf.len() };
    if !i.is_compact() {
        // The binary protocol: field headers and bools read straight off the stream, the
        // bulk of a call's bytes (most of its CPU went to the layered protocol calls).
        while let Some((id, kind)) = i.binary_field()? {
            match (id, kind) {
                (1, TType::Bool) => m.is_delete = i.binary_bool()?,
                (2, TType::String) => m.column = Some(i.read_bytes_into(buf)?),
                (3, TType::String) => m.value = i.read_bytes_into(buf)?,
                (_, other) => i.skip(other)?,
            }
        }
        return Ok(m);
    }
    i.read_struct_begin()?;
    loop {
        let field = i.read_field_begin()?;
        match (field.id, field.field_type) {
            (_, TType::Stop) => break,
            (Some(1), TType::Bool) => m.is_delete = i.read_bool()?,
            (Some(2), TType::String) => m.column = Some(i.read_bytes_into(buf)?),
            (Some(3), TType::String) => m.value = i.read_bytes_into(buf)?,
            (_, other) => i.skip(other)?,
        }
        i.read_field_end()?;
    }
    i.read_struct_end()?;
    Ok(m)
}

/// Reads one `BatchMutation` and adds it to the batch, unless a check failed before.
fn read_row(i: &mut GuardedInput, args: &mut Args, scratch: &mut Vec<Read>) -> thrift::Result<()> {
    scratch.clear();
    let mut row = None;
    let buf = args.batch.buffer();
    i.read_struct_begin()?;
    loop {
        let field = i.read_field_begin()?;
        match (field.id, field.field_type) {
            (_, TType::Stop) => break,
            (Some(1), TType::String) => row = Some(i.read_bytes_into(buf)?),
            (Some(2), TType::List) => {
                let list = i.read_list_begin()?;
                for _ in 0..list.size {
                    scratch.push(read_mutation(i, buf)?);
                }
                i.read_list_end()?;
            }
            (_, other) => i.skip(other)?,
        }
        i.read_field_end()?;
    }
    i.read_struct_end()?;
    if args.refused.is_none() {
        if let Err(e) = add_row(&mut args.batch, row, scratch) {
            args.refused = Some(e);
        }
    }
    Ok(())
}

/// Adds a row and its mutations as the handler converts them (`ops_from_thrift` with puts
/// without a qualifier refused, as `mutateRows` refuses them).
fn add_row(batch: &mut MutationBatch, row: Option<Range<usize>>, mutations: &[Read]) -> Result<(), StoreError> {
    let row = row.ok_or_else(|| illegal("BatchMutation without a row"))?;
    batch.start_row(row);
    for m in mutations {
        let column = m.column.clone().ok_or_else(|| illegal("Mutation without a column"))?;
        let colon = batch.buffer()[column.clone()].iter().position(|&b| b == b':');
        let (family, qualifier) = match colon {
            None => (column.clone(), None),
            Some(at) => (column.start..column.start + at, Some(column.start + at + 1..column.end)),
        };
        let none = column.end..column.end;
        match (m.is_delete, qualifier) {
            (true, None) => batch.push_op(OpKind::DeleteFamily, family, none.clone(), none),
            (true, Some(q)) => batch.push_op(OpKind::DeleteColumn, family, q, none),
            (false, Some(q)) => batch.push_op(OpKind::Put, family, q, m.value.clone()),
            (false, None) => return Err(illegal("Invalid famAndQf provided.")),
        }
    }
    Ok(())
}

/// Reads the arguments of `mutateRows` (1: table, 2: rows, 3: attributes) or `mutateRowsTs`
/// (1: table, 2: rows, 3: timestamp, 4: attributes).
fn read_args(i: &mut GuardedInput, with_ts: bool) -> thrift::Result<Args> {
    let mut args = Args {
        table: 0..0,
        ts: LATEST_TIMESTAMP,
        // Small to start (a call of one row is common); grows as rows are read.
        batch: MutationBatch::with_capacity(4 * 1024, 16, 64),
        refused: None,
    };
    let mut scratch = Vec::new();
    i.read_struct_begin()?;
    loop {
        let field = i.read_field_begin()?;
        match (field.id, field.field_type) {
            (_, TType::Stop) => break,
            (Some(1), TType::String) => args.table = i.read_bytes_into(args.batch.buffer())?,
            (Some(2), TType::List) => {
                let list = i.read_list_begin()?;
                for _ in 0..list.size {
                    read_row(i, &mut args, &mut scratch)?;
                }
                i.read_list_end()?;
            }
            (Some(3), TType::I64) if with_ts => args.ts = i.read_i64()?,
            (_, other) => i.skip(other)?,
        }
        i.read_field_end()?;
    }
    i.read_struct_end()?;
    Ok(args)
}

/// Checks and writes the batch, as `Handler::mutate` does.
fn apply(store: &Store, args: &mut Args) -> Result<(), StoreError> {
    if let Some(e) = args.refused.take() {
        return Err(e);
    }
    for (row, mut ops) in args.batch.rows() {
        if ops.next().is_some() {
            check_row(row)?;
        }
    }
    let table = args.batch.buffer()[args.table.clone()].to_vec();
    store.mutate_batch(&table, &args.batch, Some(args.ts), now_ms())
}

/// Reads, runs and answers one call whose header `ident` has been read.
pub fn process(
    store: &Store,
    ident: &TMessageIdentifier,
    i: &mut GuardedInput,
    o: &mut dyn TOutputProtocol,
) -> thrift::Result<()> {
    let mut args = match read_args(i, ident.name == "mutateRowsTs") {
        Ok(args) => args,
        Err(e) => return thrift::server::handle_process_result(ident, Err(e), o),
    };
    let (io, ia) = match apply(store, &mut args) {
        Ok(()) => (None, None),
        Err(e @ StoreError::IllegalArgument(_)) => (None, Some(IllegalArgument { message: Some(e.to_string()) })),
        Err(e) => (Some(IOError { message: Some(e.to_string()), can_retry: Some(e.is_retriable()) }), None),
    };
    o.write_message_begin(&TMessageIdentifier::new(ident.name.clone(), TMessageType::Reply, ident.sequence_number))?;
    o.write_struct_begin(&TStructIdentifier::new("result"))?;
    if let Some(io) = io {
        o.write_field_begin(&TFieldIdentifier::new("io", TType::Struct, 1))?;
        io.write_to_out_protocol(o)?;
        o.write_field_end()?;
    }
    if let Some(ia) = ia {
        o.write_field_begin(&TFieldIdentifier::new("ia", TType::Struct, 2))?;
        ia.write_to_out_protocol(o)?;
        o.write_field_end()?;
    }
    o.write_field_stop()?;
    o.write_struct_end()?;
    o.write_message_end()?;
    o.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbase_thrift::hbase::{BatchMutation, Mutation};
    use thrift::protocol::{TBinaryOutputProtocol, TCompactOutputProtocol, TListIdentifier};

    fn mutation(column: &str, value: Option<&str>, is_delete: bool) -> Mutation {
        Mutation {
            is_delete: Some(is_delete),
            column: Some(column.into()),
            value: value.map(Into::into),
            write_to_w_a_l: Some(true),
        }
    }

    /// `mutateRowsTs` arguments: two rows, then a row whose mutation carries a field this
    /// decoder does not know (written by hand), then the timestamp.
    fn args(o: &mut dyn TOutputProtocol) {
        let rows = [
            BatchMutation {
                row: Some(b"r1".to_vec()),
                mutations: Some(vec![mutation("f:q", Some("v"), false), mutation("g", None, true)]),
            },
            BatchMutation { row: Some(b"r2".to_vec()), mutations: Some(vec![mutation("f:gone", None, true)]) },
        ];
        o.write_struct_begin(&TStructIdentifier::new("args")).unwrap();
        o.write_field_begin(&TFieldIdentifier::new("table", TType::String, 1)).unwrap();
        o.write_bytes(b"t").unwrap();
        o.write_field_end().unwrap();
        o.write_field_begin(&TFieldIdentifier::new("rows", TType::List, 2)).unwrap();
        o.write_list_begin(&TListIdentifier::new(TType::Struct, 3)).unwrap();
        for r in &rows {
            r.write_to_out_protocol(o).unwrap();
        }
        // r3: { row: "r3", mutations: [{ 9: i32 7, column: "f:", value: "x" }] }
        o.write_struct_begin(&TStructIdentifier::new("BatchMutation")).unwrap();
        o.write_field_begin(&TFieldIdentifier::new("row", TType::String, 1)).unwrap();
        o.write_bytes(b"r3").unwrap();
        o.write_field_end().unwrap();
        o.write_field_begin(&TFieldIdentifier::new("mutations", TType::List, 2)).unwrap();
        o.write_list_begin(&TListIdentifier::new(TType::Struct, 1)).unwrap();
        o.write_struct_begin(&TStructIdentifier::new("Mutation")).unwrap();
        o.write_field_begin(&TFieldIdentifier::new("future", TType::I32, 9)).unwrap();
        o.write_i32(7).unwrap();
        o.write_field_end().unwrap();
        o.write_field_begin(&TFieldIdentifier::new("column", TType::String, 2)).unwrap();
        o.write_bytes(b"f:").unwrap();
        o.write_field_end().unwrap();
        o.write_field_begin(&TFieldIdentifier::new("value", TType::String, 3)).unwrap();
        o.write_bytes(b"x").unwrap();
        o.write_field_end().unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
        o.write_list_end().unwrap();
        o.write_field_end().unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
        o.write_list_end().unwrap();
        o.write_field_end().unwrap();
        o.write_field_begin(&TFieldIdentifier::new("timestamp", TType::I64, 3)).unwrap();
        o.write_i64(42).unwrap();
        o.write_field_end().unwrap();
        o.write_field_stop().unwrap();
        o.write_struct_end().unwrap();
        o.flush().unwrap();
    }

    /// Each row and its ops (kind, family, qualifier, value).
    type Rows = Vec<(Vec<u8>, Vec<(OpKind, Vec<u8>, Vec<u8>, Vec<u8>)>)>;

    fn decoded(compact: bool) -> Rows {
        let mut bytes = Vec::new();
        if compact {
            args(&mut TCompactOutputProtocol::new(&mut bytes));
        } else {
            args(&mut TBinaryOutputProtocol::new(&mut bytes, true));
        }
        let mut input = GuardedInput::over(bytes, compact, 1024);
        let mut read = read_args(&mut input, true).unwrap();
        assert!(read.refused.is_none());
        assert_eq!((read.ts, &read.batch.buffer()[read.table.clone()]), (42, &b"t"[..]));
        let rows = read
            .batch
            .rows()
            .map(|(row, ops)| {
                let ops =
                    ops.map(|op| (op.kind, op.family.to_vec(), op.qualifier.to_vec(), op.value.to_vec())).collect();
                (row.to_vec(), ops)
            })
            .collect();
        rows
    }

    #[test]
    fn both_protocols_decode_rows_columns_and_deletes_and_skip_unknown_fields() {
        let binary = decoded(false);
        assert_eq!(binary, decoded(true));
        let b = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            binary,
            vec![
                (b("r1"), vec![(OpKind::Put, b("f"), b("q"), b("v")), (OpKind::DeleteFamily, b("g"), vec![], vec![])]),
                (b("r2"), vec![(OpKind::DeleteColumn, b("f"), b("gone"), vec![])]),
                (b("r3"), vec![(OpKind::Put, b("f"), vec![], b("x"))]),
            ]
        );
    }

    #[test]
    fn a_row_without_a_key_or_a_put_without_a_qualifier_is_refused() {
        let mut m = MutationBatch::default();
        let put = Read { is_delete: false, column: Some(0..0), value: 0..0 };
        assert!(matches!(add_row(&mut m, None, &[]), Err(StoreError::IllegalArgument(_))));
        let family_only = m.push_bytes(b"f");
        let put = Read { column: Some(family_only), ..put };
        let row = m.push_bytes(b"r");
        let err = add_row(&mut m, Some(row), &[put]).unwrap_err();
        assert!(err.to_string().contains("Invalid famAndQf"), "{err}");
    }
}
